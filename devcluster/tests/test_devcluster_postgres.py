"""The real PostgreSQL pair (``devcluster.postgres``): streaming replication, replay held back and let go,
promotion, and no server left behind, however the test that started it ends.

Every wait is a bounded poll on a condition the servers report (``wait_for``), never a sleep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from litefs_route_devcluster import port_open, wait_for
from litefs_route_devcluster.postgres import PostgresPair
from litefs_route_devcluster.pytest_plugin import PostgresPairFactory
from tests.support import ROOT

pytestmark = pytest.mark.postgres


def _alive(pid: int) -> bool:
    """True while *pid* runs (a zombie has exited: PID 1 in a container may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return False


def _pgrep(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout.split()
    return [int(pid) for pid in found if int(pid) != os.getpid() and _alive(int(pid))]


def _count(pair: PostgresPair, node: str) -> int:
    return int(pair.query(node, "SELECT count(*) FROM t"))  # type: ignore[arg-type]


def test_writes_on_the_primary_reach_the_standby_which_refuses_writes(postgres_pair: PostgresPairFactory) -> None:
    pair = postgres_pair()
    assert pair.query("primary", "SELECT pg_is_in_recovery()") == "f"
    assert pair.query("standby", "SELECT pg_is_in_recovery()") == "t"
    assert pair.query("standby", "SHOW listen_addresses") == "127.0.0.1"
    assert pair.primary_dsn == f"postgresql://postgres@127.0.0.1:{pair.primary.port}/postgres"
    pair.query("primary", "CREATE TABLE t (x int)")
    pair.query("primary", "INSERT INTO t VALUES (1), (2)")
    pair.wait_caught_up(10)
    assert _count(pair, "standby") == 2
    with pytest.raises(RuntimeError, match="cannot execute INSERT in a read-only transaction"):
        pair.query("standby", "INSERT INTO t VALUES (3)")


def test_a_paused_standby_receives_the_wal_but_shows_the_row_only_once_resumed(
    postgres_pair: PostgresPairFactory,
) -> None:
    pair = postgres_pair()
    pair.query("primary", "CREATE TABLE t (x int)")
    pair.wait_caught_up(10)
    pair.pause_replay()
    assert pair.query("standby", "SELECT pg_get_wal_replay_pause_state()") == "paused"
    pair.query("primary", "INSERT INTO t VALUES (1)")
    written = pair.query("primary", "SELECT pg_current_wal_lsn()")
    # The WAL arrives (received, flushed on the standby): only its replay is held back.
    wait_for(
        lambda: pair.query("standby", f"SELECT pg_last_wal_receive_lsn() >= '{written}'::pg_lsn") == "t",
        timeout=10,
        message="the standby did not receive the insert's WAL",
    )
    assert pair.query("standby", f"SELECT pg_last_wal_replay_lsn() < '{written}'::pg_lsn") == "t"
    assert _count(pair, "standby") == 0
    with pytest.raises(TimeoutError):
        pair.wait_caught_up(0.3)
    assert _count(pair, "standby") == 0
    pair.resume_replay()
    assert pair.query("standby", "SELECT pg_get_wal_replay_pause_state()") == "not paused"
    pair.wait_caught_up(10)
    assert _count(pair, "standby") == 1


def test_promote_makes_the_standby_a_writable_primary(postgres_pair: PostgresPairFactory) -> None:
    pair = postgres_pair()
    pair.query("primary", "CREATE TABLE t (x int)")
    pair.wait_caught_up(10)
    with pytest.raises(RuntimeError, match="read-only transaction"):
        pair.query("standby", "INSERT INTO t VALUES (1)")
    pair.promote()
    assert pair.promoted
    assert pair.query("standby", "SELECT pg_is_in_recovery()") == "f"
    pair.query("standby", "INSERT INTO t VALUES (1)")
    assert _count(pair, "standby") == 1
    assert _count(pair, "primary") == 0  # two primaries now: the old one never hears of it


def test_a_restarted_standby_streams_again(postgres_pair: PostgresPairFactory) -> None:
    pair = postgres_pair()
    pair.query("primary", "CREATE TABLE t (x int)")
    pair.restart("standby")
    pair.query("primary", "INSERT INTO t VALUES (1)")
    pair.wait_caught_up(20)
    assert _count(pair, "standby") == 1


def test_close_leaves_no_process_no_port_and_no_folder(postgres_pair: PostgresPairFactory) -> None:
    pair = postgres_pair()
    pids = pair.pids()
    ports = [pair.primary.port, pair.standby.port]
    assert len(pids) >= 4  # two postmasters and their children (checkpointer, WAL sender, receiver...)
    assert _pgrep(pair.base_dir)
    assert all(port_open("127.0.0.1", port) for port in ports)
    pair.close()
    assert [pid for pid in pids if _alive(pid)] == []
    assert _pgrep(pair.base_dir) == []
    assert not [port for port in ports if port_open("127.0.0.1", port)]
    assert not os.path.exists(pair.base_dir)
    pair.close()  # idempotent


_CRASHING = """
import json, os, sys
from litefs_route_devcluster.postgres import PostgresPair
pair = PostgresPair().start()
print(json.dumps({"pids": pair.pids(), "base": pair.base_dir}), flush=True)
sys.stdin.read()  # killed here
"""


def test_a_killed_owner_leaves_no_server_behind() -> None:
    """The reaper stops both servers and removes the folder when the process that started them dies."""
    from litefs_route_devcluster.pytest_plugin import require_postgres

    require_postgres()
    with subprocess.Popen(
        [sys.executable, "-c", _CRASHING], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as owner:
        try:
            assert owner.stdout is not None
            started = json.loads(owner.stdout.readline())
        finally:
            owner.kill()
    assert len(started["pids"]) >= 4
    wait_for(
        lambda: not any(_alive(pid) for pid in started["pids"]),
        timeout=30,
        message=f"PostgreSQL outlived its owner: {[p for p in started['pids'] if _alive(p)]}",
    )
    wait_for(lambda: not os.path.exists(started["base"]), timeout=30, message="the folder was left")
    # The reaper itself (its command line names the folder) exits right after removing it.
    wait_for(lambda: _pgrep(started["base"]) == [], timeout=30, message="a process still names the folder")


def _inner_run(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(
        textwrap.dedent(
            """
            def test_needs_postgres(postgres_pair):
                postgres_pair()
            """
        )
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-c", os.devnull, str(test_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def test_the_fixture_skips_without_postgresql_and_fails_when_it_is_required(tmp_path: Path) -> None:
    empty = tmp_path / "no-postgres-here"
    empty.mkdir()
    skipped = _inner_run(tmp_path, {"POSTGRES_BIN_DIR": str(empty), "POSTGRES_REQUIRED": "0"})
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "1 skipped" in skipped.stdout
    assert f"no PostgreSQL server binaries (initdb, postgres, pg_ctl, pg_basebackup, psql) in {empty}" in skipped.stdout
    failed = _inner_run(tmp_path, {"POSTGRES_BIN_DIR": str(empty), "POSTGRES_REQUIRED": "1"})
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "POSTGRES_REQUIRED is set but no PostgreSQL server binaries" in failed.stdout
