"""The dev cluster's replication (``devcluster.replication``), in-process: commits copied
after the lag, replicas that refuse writes, and failover as the mount files show it.

No sleeps standing in for synchronisation: every wait is a bounded poll on a
condition (``wait_for``), and assertions are about the order of events, not durations.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from litefs_route._mount import Role, parse_lag, read_node_state, read_position
from litefs_route_devcluster import Replicator, wait_for
from tests.support import read_if_exists


@pytest.fixture
def replicator(tmp_path: Path) -> Iterator[Replicator]:
    rep = Replicator({n: str(tmp_path / n) for n in ("a", "b", "c")}, "a", lag=0.0).start()
    try:
        yield rep
    finally:
        rep.close()


def _write(path: str, sql: str, *params: object) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def _count(path: str, table: str = "t") -> int:
    conn = sqlite3.connect(path, timeout=5)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def test_replicas_copy_commits_and_refuse_writes(replicator: Replicator) -> None:
    primary_db = replicator.db_path("a")
    start = replicator.positions()["a"]
    _write(primary_db, "CREATE TABLE t (x)")
    _write(primary_db, "INSERT INTO t VALUES (1)")
    positions = replicator.wait_replicated()
    assert positions == {"a": start + 2, "b": start + 2, "c": start + 2}  # one TXID per commit
    for node in ("b", "c"):
        folder = replicator.folder(node)
        assert _count(replicator.db_path(node)) == 1
        with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
            _write(replicator.db_path(node), "INSERT INTO t VALUES (2)")
        assert read_if_exists(f"{folder}/.primary") == b"a\n"
        lag = parse_lag(read_if_exists(f"{folder}/.lag") or b"")
        assert lag is not None
        assert lag > 0
        state = read_node_state(folder, node)
        assert (state.role, state.primary_id) == (Role.REPLICA, "a")
        assert read_position(folder, "app.db") == read_position(replicator.folder("a"), "app.db")
    folder_a = replicator.folder("a")
    assert read_if_exists(f"{folder_a}/.primary") is None
    assert read_if_exists(f"{folder_a}/.lag") == b"+000000000\n"
    assert read_node_state(folder_a, "a").role is Role.PRIMARY
    pos = read_if_exists(f"{folder_a}/app.db-pos")
    assert pos is not None
    assert re.fullmatch(rb"[0-9a-f]{16}/[0-9a-f]{16}\n", pos)


def test_lag_holds_changes_back_until_it_passes(replicator: Replicator) -> None:
    _write(replicator.db_path("a"), "CREATE TABLE t (x)")
    replicator.wait_replicated()
    before = replicator.positions()["b"]
    replicator.set_lag(3600)
    _write(replicator.db_path("a"), "INSERT INTO t VALUES (1)")
    wait_for(lambda: replicator.positions()["a"] == before + 1, message="commit not noticed")
    # .lag grows while the replica waits; its copy and position stay where they were.
    lag_b = replicator.folder("b") + "/.lag"
    wait_for(lambda: (parse_lag(read_if_exists(lag_b) or b"") or 0) >= 20, message=".lag does not grow")
    assert replicator.positions()["b"] == before
    assert _count(replicator.db_path("b")) == 0
    replicator.set_lag(0)
    replicator.wait_replicated()
    assert _count(replicator.db_path("b")) == 1
    assert parse_lag(read_if_exists(lag_b) or b"") == 1


def test_failover_shows_no_primary_then_moves_writability(replicator: Replicator) -> None:
    _write(replicator.db_path("a"), "CREATE TABLE t (x)")
    replicator.wait_replicated()
    seen: list[tuple[str | None, ...]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            roles = tuple(read_node_state(replicator.folder(n), n).primary_id for n in ("a", "b", "c"))
            if not seen or seen[-1] != roles:
                seen.append(roles)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        wait_for(lambda: bool(seen))
        replicator.promote("b", handover=0.3)
        wait_for(lambda: seen[-1] == ("b", "b", "b"))
    finally:
        stop.set()
        watcher.join()
    # Each folder goes from "a" to "no primary" (all at once) to "b": never straight from a to b.
    assert seen[0] == ("a", "a", "a")
    assert (None, None, None) in seen
    assert seen.index((None, None, None)) < seen.index(("b", "b", "b"))
    for node in ("a", "b", "c"):
        state = read_node_state(replicator.folder(node), node)
        assert state.primary_id == "b"
    _write(replicator.db_path("b"), "INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        _write(replicator.db_path("a"), "INSERT INTO t VALUES (2)")
    replicator.wait_replicated()
    assert [_count(replicator.db_path(n)) for n in ("a", "b", "c")] == [1, 1, 1]


def test_no_primary_files_during_handover(replicator: Replicator) -> None:
    done = threading.Event()

    def promote() -> None:
        replicator.promote("c", handover=1)
        done.set()

    thread = threading.Thread(target=promote)
    thread.start()
    try:
        wait_for(lambda: replicator.primary is None)
        for node in ("a", "b", "c"):
            folder = replicator.folder(node)
            assert read_if_exists(f"{folder}/.primary") is None
            assert read_if_exists(f"{folder}/.lag") == b"+2147483647"
            assert read_node_state(folder, node).role is Role.NO_PRIMARY
        assert not done.is_set()
    finally:
        thread.join()
    assert replicator.primary == "c"
