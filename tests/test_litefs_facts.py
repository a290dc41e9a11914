"""What real LiteFS shows in its mount, and what litefs-route reads from it (marker ``litefs``).

Each test observes, on real LiteFS nodes mounted through FUSE, a fact the
library relies on, then the behaviour built on it. LiteFS version: see
``litefs_route_devcluster.litefs.LITEFS_VERSION``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

import pytest

from litefs_route._mount import Role, read_node_state, read_position
from litefs_route._ops.halt import HaltLockError, halt_lock
from litefs_route._sqlite_errors import is_readonly_error
from litefs_route_devcluster.files import NO_PRIMARY_LAG, format_lag
from tests.support import wait_until

if TYPE_CHECKING:
    from litefs_route_devcluster.litefs import LiteFSCluster
    from litefs_route_devcluster.pytest_plugin import LiteFSClusterFactory

pytestmark = pytest.mark.litefs

LAG = re.compile(rb"\+[0-9]{9}\n")
POSITION = re.compile(rb"[0-9a-f]{16}/[0-9a-f]{16}\n")


def _open_errno(path: str) -> int | None:
    """The errno that opening *path* fails with, None if it opens."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        return exc.errno
    return None


def _create_table(cluster: LiteFSCluster, node: str, database: str = "app.db", wal: bool = False) -> None:
    with sqlite3.connect(cluster.db_path(node, database)) as db:
        if wal:
            db.execute("PRAGMA journal_mode=wal")
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        db.execute("INSERT INTO t (v) VALUES ('first')")
    db.close()


def _count(cluster: LiteFSCluster, node: str, database: str = "app.db") -> int:
    db = sqlite3.connect(cluster.db_path(node, database))
    try:
        return int(db.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        db.close()


# -- 1. the files ----------------------------------------------------------------


def test_mount_files_on_a_primary_and_a_replica(litefs_real_cluster: LiteFSClusterFactory) -> None:
    cluster = litefs_real_cluster(instances=["node1", "node2"], lease="static")
    primary_dir, replica_dir = cluster.mount_dir("node1"), cluster.mount_dir("node2")

    # The primary: no .primary (open() fails with ENOENT), .lag exactly zero *with* a newline.
    assert _open_errno(os.path.join(primary_dir, ".primary")) == errno.ENOENT
    assert cluster.read("node1", ".lag") == b"+000000000\n" == format_lag(0)  # the imitation's writer agrees
    # The replica: the primary's lease hostname and one newline.
    assert cluster.read("node2", ".primary") == b"node1\n"
    # Its .lag is "+2147483647" until the primary first sends it something (LiteFS formats
    # "%+010d\n" but the file's size is 11 bytes, so the newline is cut off), then its lag in ms.
    first_lag = cluster.read("node2", ".lag") or b""
    assert first_lag == b"+2147483647" == format_lag(NO_PRIMARY_LAG) or LAG.fullmatch(first_lag)
    # No -pos before the database exists.
    assert cluster.read("node1", "app.db-pos") is None

    _create_table(cluster, "node1")
    cluster.wait_replicated()
    # A replica that receives the table in its initial replication set applies it
    # before LiteFS marks it ready, and transactions before that set no timestamp:
    # .lag leaves "+2147483647" only with the "ready" frame's heartbeat, just after.
    wait_until(
        lambda: cluster.read("node2", ".lag") != format_lag(NO_PRIMARY_LAG),
        what="node2's first heartbeat from node1",
    )
    lag = cluster.read("node2", ".lag") or b""
    assert LAG.fullmatch(lag)
    assert int(lag) < 60_000
    primary_pos, replica_pos = cluster.read("node1", "app.db-pos"), cluster.read("node2", "app.db-pos")
    assert primary_pos is not None
    assert POSITION.fullmatch(primary_pos)
    assert len(primary_pos) == 34
    assert replica_pos == primary_pos

    # What litefs-route makes of it.
    assert read_node_state(primary_dir, "node1").role is Role.PRIMARY
    replica = read_node_state(replica_dir, "node2")
    assert (replica.role, replica.primary_id) == (Role.REPLICA, "node1")
    position = read_position(replica_dir, "app.db")
    assert position is not None
    assert position.txid == cluster.position("node1")


def test_pos_moves_before_the_commit_returns(litefs_real_cluster: LiteFSClusterFactory) -> None:
    # The TXID cookie is taken from -pos right after the handler's commit: it must name that commit.
    cluster = litefs_real_cluster(instances=["node1"], lease="static")
    _create_table(cluster, "node1")
    db = sqlite3.connect(cluster.db_path("node1"), isolation_level=None)
    try:
        for _ in range(20):
            before = cluster.position("node1")
            assert before is not None
            db.execute("INSERT INTO t (v) VALUES ('x')")
            assert cluster.position("node1") == before + 1
    finally:
        db.close()


# -- 2. the error a write on a replica raises ------------------------------------------


@pytest.mark.parametrize(
    ("wal", "message", "code"),
    [
        pytest.param(False, "attempt to write a readonly database", 8, id="rollback-journal"),
        pytest.param(True, "disk I/O error", 10, id="wal"),
    ],
)
def test_a_write_on_a_replica_fails_with_sqlites_readonly_error(
    litefs_real_cluster: LiteFSClusterFactory, wal: bool, message: str, code: int
) -> None:
    cluster = litefs_real_cluster(instances=["node1", "node2"], lease="static")
    _create_table(cluster, "node1", wal=wal)
    cluster.wait_replicated()
    db = sqlite3.connect(cluster.db_path("node2"), isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError) as raised:
            db.execute("INSERT INTO t (v) VALUES ('on a replica')")
        assert str(raised.value) == message
        # The primary code; the extended code says more (READONLY_DIRECTORY, IOERR_WRITE).
        assert getattr(raised.value, "sqlite_errorcode", 0) & 0xFF == code  # Python >= 3.11
        assert is_readonly_error(raised.value)
    finally:
        db.close()
    assert _count(cluster, "node1") == 1


# -- 3. the HALT lock ----------------------------------------------------------------


def test_halt_lock_lets_a_replica_write(litefs_real_cluster: LiteFSClusterFactory) -> None:
    cluster = litefs_real_cluster(instances=["node1", "node2", "node3"], lease="static")
    _create_table(cluster, "node1")
    cluster.wait_replicated()

    with halt_lock(cluster.db_path("node2"), instance_id="node2") as taken:
        assert taken is True
        with sqlite3.connect(cluster.db_path("node2")) as db:
            db.execute("INSERT INTO t (v) VALUES ('from node2 under HALT')")
        db.close()
    cluster.wait_replicated()
    assert [_count(cluster, n) for n in ("node1", "node2", "node3")] == [2, 2, 2]

    # Released on an exception: the primary writes again, and the lock can be taken again.
    with pytest.raises(ZeroDivisionError), halt_lock(cluster.db_path("node3"), instance_id="node3"):
        1 / 0  # noqa: B018
    with sqlite3.connect(cluster.db_path("node1"), timeout=5) as db:
        db.execute("INSERT INTO t (v) VALUES ('primary after the halt')")
    db.close()
    with halt_lock(cluster.db_path("node3"), instance_id="node3") as taken:
        assert taken is True
    cluster.wait_replicated()
    assert _count(cluster, "node3") == 3

    # On the primary it is not needed.
    with halt_lock(cluster.db_path("node1"), instance_id="node1") as taken:
        assert taken is False


def test_halt_lock_on_a_database_litefs_does_not_hold(litefs_real_cluster: LiteFSClusterFactory) -> None:
    cluster = litefs_real_cluster(instances=["node1", "node2"], lease="static")
    with (
        pytest.raises(HaltLockError, match="does not exist"),
        halt_lock(cluster.db_path("node2", "missing.db"), instance_id="node2"),
    ):
        pass


# -- held-back replication (the relay) ----------------------------------------------


def test_a_paused_relay_holds_one_replica_back(litefs_real_cluster: LiteFSClusterFactory) -> None:
    cluster = litefs_real_cluster(instances=["node1", "node2", "node3"], lease="static")
    _create_table(cluster, "node1")
    cluster.wait_replicated()
    cluster.pause_replication("node3")
    try:
        with sqlite3.connect(cluster.db_path("node1")) as db:
            db.execute("INSERT INTO t (v) VALUES ('while node3 is held back')")
        db.close()
        target = cluster.position("node1")
        assert target is not None
        # node2 catches up; node3 cannot while its relay holds the stream.
        deadline = time.monotonic() + 10
        while cluster.position("node2") != target and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cluster.position("node2") == target
        assert cluster.position("node3") == target - 1
    finally:
        cluster.resume_replication("node3")
    cluster.wait_replicated()
    assert _count(cluster, "node3") == 2


def test_the_relay_pauses_without_blocking_the_caller() -> None:
    # The relay is test infrastructure: a paused relay holds bytes, a resumed one delivers them.
    import socket

    from litefs_route_devcluster.litefs import TcpRelay

    with socket.create_server(("127.0.0.1", 0)) as server:
        relay = TcpRelay(server.getsockname()[:2])
        try:
            client = socket.create_connection(relay.address, timeout=5)
            peer, _ = server.accept()
            peer.settimeout(0.3)
            relay.pause()
            client.sendall(b"held")
            with pytest.raises(TimeoutError):
                peer.recv(10)
            got: list[bytes] = []
            reader = threading.Thread(target=lambda: got.append(peer.recv(10)))
            peer.settimeout(5)
            reader.start()
            relay.resume()
            reader.join(5)
            assert got == [b"held"]
            client.close()
            peer.close()
        finally:
            relay.close()


# -- the event stream (GET /events), the facts issue 14 builds on ------------------------------


def test_the_event_stream(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """Newline-delimited JSON, chunked: init, a tx per transaction (its TXID is -pos's), primaryChange.

    With no primary known, primaryChange carries no hostname at all (not an empty one).
    """
    import http.client
    import json
    import queue

    cluster = litefs_real_cluster(instances=3, lease="consul")
    events: queue.Queue[dict[str, object]] = queue.Queue()
    conn = http.client.HTTPConnection("127.0.0.1", cluster.nodes["node2"].http_port, timeout=30)
    conn.request("GET", "/events")
    response = conn.getresponse()
    assert (response.status, response.getheader("Content-Type")) == (200, "application/json")

    def read() -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            while line := response.readline():
                events.put(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:

        def next_event(kind: str) -> dict[str, object]:
            while True:
                event = events.get(timeout=20)
                if event["type"] == kind:
                    return event

        assert next_event("init") == {"type": "init", "data": {"isPrimary": False, "hostname": "node1"}}
        _create_table(cluster, "node1")
        tx = next_event("tx")
        assert tx["db"] == "app.db"
        data = tx["data"]
        assert isinstance(data, dict)
        assert set(data) == {"txID", "postApplyChecksum", "pageSize", "commit", "timestamp"}
        assert re.fullmatch(r"[0-9a-f]{16}", str(data["txID"]))
        target = cluster.wait_replicated()["node2"]
        txids = [int(str(data["txID"]), 16)]
        while txids[-1] < target:  # one tx event per transaction, up to the one -pos shows
            later = next_event("tx")["data"]
            assert isinstance(later, dict)
            txids.append(int(str(later["txID"]), 16))
        assert txids == list(range(txids[0], target + 1))

        cluster.promote("node3")
        changes: list[object] = []
        while not changes or changes[-1] != {"isPrimary": False, "hostname": "node3"}:
            changes.append(next_event("primaryChange")["data"])
        # The old connection ends with no primary known: no hostname key at all.
        assert {"isPrimary": False} in changes
    finally:
        # Unblock the reader first: closing a response another thread reads from waits for that read.
        with contextlib.suppress(OSError):
            assert conn.sock is not None
            conn.sock.shutdown(socket.SHUT_RDWR)
        reader.join(10)
        conn.close()
