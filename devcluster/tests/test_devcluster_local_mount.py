"""``python -m litefs_route_devcluster.local_mount``: a folder litefs-route reads as a primary or a replica.

Run as a user would (``eval "$(...)"`` in a shell), then asked what
litefs-route sees there (``litefs-route status``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

PRIMARY_ID = "e784079b449483"


def _status_after_eval(tmp_path: Path, *args: str) -> dict[str, object]:
    make = shlex.join([sys.executable, "-m", "litefs_route_devcluster.local_mount", *args])
    status = shlex.join([sys.executable, "-m", "litefs_route", "status", "--json"])
    environment = {k: v for k, v in os.environ.items() if k not in ("LITEFS_DIR", "FLY_MACHINE_ID")}
    done = subprocess.run(
        ["/bin/sh", "-c", f'eval "$({make})" && {status}'],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_replica_by_hand(tmp_path: Path) -> None:
    status = _status_after_eval(tmp_path, "--replica-of", PRIMARY_ID)
    assert status["role"] == "replica"
    assert status["primary"] == PRIMARY_ID
    assert status["instance"] == "local-replica"
    assert status["dir"] == str(tmp_path / ".litefs-local" / "replica")
    assert status["lag_ms"] == 15
    assert status["source"] == "mount"  # LITEFS_API_URL=off: nothing asked of a LiteFS that is not there


@pytest.mark.parametrize("where", ["default", "given"])
def test_a_primary_by_hand(tmp_path: Path, where: str) -> None:
    folder = tmp_path / "mnt"
    args = ("--dir", str(folder), "--instance-id", PRIMARY_ID) if where == "given" else ()
    status = _status_after_eval(tmp_path, *args)
    assert status["role"] == "primary"
    assert status["is_primary"] is True
    assert status["dir"] == str(folder if where == "given" else tmp_path / ".litefs-local" / "primary")
    assert status["instance"] == (PRIMARY_ID if where == "given" else "local-primary")
