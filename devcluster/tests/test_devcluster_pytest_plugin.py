"""The dev cluster's pytest plugin (``devcluster.pytest_plugin``): its fixture cleans up even after a failing test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from litefs_route_devcluster import port_open
from tests.support import ASGI_APP, ROOT, process_gone


def test_fixture_leaves_no_process_or_port_when_a_test_fails(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(
        textwrap.dedent(
            f"""
            import json
            def test_fails(litefs_cluster):
                cluster = litefs_cluster({ASGI_APP!r}, instances=2, app_dir={str(ROOT)!r})
                pids = list(cluster.pids().values())
                with open({str(record)!r}, "w") as f:
                    json.dump({{"pids": pids, "ports": cluster.ports()}}, f)
                assert False, "this test fails on purpose"
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            # No -p: the fixtures come from the installed distribution's pytest11 entry point.
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(test_file),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "this test fails on purpose" in result.stdout
    recorded = json.loads(record.read_text())
    assert len(recorded["pids"]) == 2
    assert len(recorded["ports"]) == 3
    assert all(process_gone(pid) for pid in recorded["pids"])
    assert not [port for port in recorded["ports"] if port_open("127.0.0.1", port)]
