"""The dev cluster's mount files (``files``): LiteFS's exact formats, read back by ``litefs_route._mount``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from litefs_route._mount import parse_lag, parse_position, read_position
from litefs_route_devcluster.files import format_lag, format_position, write_lag, write_position, write_primary
from tests.support import read_if_exists


def test_mount_files_have_litefs_formats(tmp_path: Path) -> None:
    folder = str(tmp_path)
    assert format_lag(0) == b"+000000000\n"
    assert format_lag(2147483647) == b"+2147483647"  # as real LiteFS shows it: cut to 11 bytes
    assert format_position(5, 0xABC) == b"0000000000000005/0000000000000abc\n"
    write_primary(folder, "node2")
    write_lag(folder, 42)
    write_position(folder, "app.db", 7, 9)
    assert read_if_exists(f"{folder}/.primary") == b"node2\n"
    assert parse_lag(read_if_exists(f"{folder}/.lag") or b"") == 42
    assert read_position(folder, "app.db") == parse_position(b"0000000000000007/0000000000000009\n")
    write_primary(folder, None)
    assert read_if_exists(f"{folder}/.primary") is None
    assert sorted(os.listdir(folder)) == [".lag", "app.db-pos"]  # no temporary files left
    with pytest.raises(ValueError, match="instance id"):
        write_primary(folder, "bad id\nx")
