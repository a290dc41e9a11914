"""What SQLite answers a write when LiteFS goes away, and what the middleware makes of it (marker ``litefs``).

Two halves, both on real LiteFS v0.5.14 with a Consul lease:

- **observations**: SQLite used directly on a node's mount, one test per
  answer in :mod:`litefs_route._sqlite_errors`' table, each asserting the
  code SQLite gave and the class :func:`classify_write_failure` puts it in;
- **the middleware**: a write held where LiteFS dies under it, through the
  Fly-like front and both adapters: an I/O error at COMMIT is answered 502
  with its outcome unknown and never replayed; a database that cannot be
  opened waits for a primary and is replayed there; a write waiting for a
  primary is never replayed to the dead one LiteFS names for an instant
  while its lease runs out.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from litefs_route._events import PrimaryChange, read_events
from litefs_route._replies import OUTCOME_HEADER
from litefs_route._sqlite_errors import WriteFailureKind, classify_write_failure
from litefs_route_devcluster import wait_for
from tests.support import logged

if TYPE_CHECKING:
    from litefs_route_devcluster.litefs import LiteFSCluster
    from litefs_route_devcluster.pytest_plugin import LiteFSClusterFactory

pytestmark = pytest.mark.litefs

APPS = [
    pytest.param("tests.devcluster_apps.asgi_app:app", id="asgi"),
    pytest.param("tests.devcluster_apps.wsgi_app:app", id="wsgi"),
]

REFUSED, IO_ERROR = WriteFailureKind.REFUSED, WriteFailureKind.IO_ERROR


def _on(instance: str) -> dict[str, str]:
    return {"fly-force-instance-id": instance}


def _connect(cluster: LiteFSCluster, node: str) -> sqlite3.Connection:
    return sqlite3.connect(cluster.db_path(node), timeout=10, isolation_level=None)


def _seed(cluster: LiteFSCluster, primary: str, journal: str = "delete") -> None:
    conn = _connect(cluster, primary)
    try:
        conn.execute(f"PRAGMA journal_mode={journal}")
        conn.execute("CREATE TABLE IF NOT EXISTS writes (id TEXT PRIMARY KEY, instance TEXT NOT NULL, body TEXT)")
    finally:
        conn.close()
    cluster.wait_replicated()


def _failure(exc: sqlite3.Error) -> tuple[str, WriteFailureKind | None]:
    failure = classify_write_failure(exc)
    # (sqlite_errorname: Python 3.11+; the tests on real LiteFS run on Linux with a current Python)
    return str(getattr(exc, "sqlite_errorname", "?")), None if failure is None else failure.kind


def _rows(cluster: LiteFSCluster, node: str, write_id: str) -> int:
    conn = _connect(cluster, node)
    try:
        return int(conn.execute("SELECT count(*) FROM writes WHERE id = ?", (write_id,)).fetchone()[0])
    finally:
        conn.close()


def _count_all(cluster: LiteFSCluster, node: str) -> int:
    conn = _connect(cluster, node)
    try:
        return int(conn.execute("SELECT count(*) FROM writes").fetchone()[0])
    finally:
        conn.close()


def _new_primary(cluster: LiteFSCluster, gone: str) -> str:
    """Wait until a node other than *gone* holds the lease and every running node names it."""
    wait_for(lambda: cluster.primary not in (None, gone), timeout=30, message="no new primary was elected")
    primary = cluster.wait_primary()
    assert primary != gone
    return primary


# -- what SQLite answers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("journal", "code", "kind"),
    [("delete", "SQLITE_READONLY_DIRECTORY", REFUSED), ("wal", "SQLITE_IOERR_WRITE", IO_ERROR)],
)
def test_observed_a_write_on_a_replica(
    litefs_real_cluster: LiteFSClusterFactory, journal: str, code: str, kind: WriteFailureKind
) -> None:
    """A replica refuses before anything is written; in WAL mode as an I/O error (so the node's role decides)."""
    cluster = litefs_real_cluster(instances=2, lease="consul")
    _seed(cluster, "node1", journal)
    conn = _connect(cluster, "node2")
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("INSERT INTO writes (id, instance) VALUES ('r', 'node2')")
    conn.close()
    assert _failure(info.value) == (code, kind)
    assert _rows(cluster, "node1", "r") == 0


def test_observed_a_handoff_under_an_open_connection(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """The lease handed off (LiteFS's promote): the old primary's next write is refused before it writes."""
    cluster = litefs_real_cluster(instances=3, lease="consul")
    _seed(cluster, "node1")
    conn = _connect(cluster, "node1")
    conn.execute("INSERT INTO writes (id, instance) VALUES ('before', 'node1')")  # the connection works
    cluster.promote("node2")
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("INSERT INTO writes (id, instance) VALUES ('after', 'node1')")
    conn.close()
    assert _failure(info.value) == ("SQLITE_READONLY_DIRECTORY", REFUSED)
    cluster.wait_replicated()
    assert (_rows(cluster, "node2", "before"), _rows(cluster, "node2", "after")) == (1, 0)


def test_observed_sigterm_of_the_primarys_litefs(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """LiteFS stopped gracefully under an open connection: the next write cannot take its lock, nothing ran."""
    cluster = litefs_real_cluster(instances=3, lease="consul")
    _seed(cluster, "node1")
    conn = _connect(cluster, "node1")
    conn.execute("INSERT INTO writes (id, instance) VALUES ('before', 'node1')")
    cluster.wait_replicated()
    cluster.stop_node("node1")
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("INSERT INTO writes (id, instance) VALUES ('after', 'node1')")
    conn.close()
    assert _failure(info.value) == ("SQLITE_IOERR_LOCK", REFUSED)
    primary = _new_primary(cluster, "node1")
    assert (_rows(cluster, primary, "before"), _rows(cluster, primary, "after")) == (1, 0)


@pytest.mark.parametrize(
    ("journal", "codes", "kind"),
    [
        ("delete", {"SQLITE_IOERR_LOCK"}, REFUSED),
        # which of the two depends on where in the WAL's write the mount died
        ("wal", {"SQLITE_IOERR_WRITE", "SQLITE_PROTOCOL"}, IO_ERROR),
    ],
)
def test_observed_kill_of_litefs_mid_transaction_then_open(
    litefs_real_cluster: LiteFSClusterFactory, journal: str, codes: set[str], kind: WriteFailureKind
) -> None:
    """kill -9 with a transaction open: COMMIT fails (rollback mode: its lock; WAL: its write); then CANTOPEN."""
    cluster = litefs_real_cluster(instances=3, lease="consul")
    _seed(cluster, "node1", journal)
    conn = _connect(cluster, "node1")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO writes (id, instance) VALUES ('mid', 'node1')")
    cluster.kill_node("node1")
    with pytest.raises(sqlite3.OperationalError) as commit:
        conn.execute("COMMIT")
    name, got = _failure(commit.value)
    assert name in codes
    assert got is kind
    with pytest.raises(sqlite3.OperationalError) as opening:
        _count_all(cluster, "node1")
    assert _failure(opening.value) == ("SQLITE_CANTOPEN", REFUSED)
    primary = _new_primary(cluster, "node1")
    assert _rows(cluster, primary, "mid") == 0  # had not reached LiteFS (SQLite cannot tell, in WAL mode)


# -- through the middleware ------------------------------------------------------------------------


@pytest.fixture
def hold_dir(tmp_path: Path) -> Path:
    path = tmp_path / "holds"
    path.mkdir()
    return path


class _HeldWrite:
    """One POST /held-write/<id> sent through the front in a thread, held in its handler until released."""

    def __init__(self, pool: ThreadPoolExecutor, cluster: LiteFSCluster, holds: Path, write_id: str, **kw: str):
        self.holds, self.write_id = holds, write_id
        hold, node = kw["hold"], kw["node"]
        url = f"{cluster.front_url}/held-write/{write_id}?hold={hold}"
        self.response: Future[httpx.Response] = pool.submit(lambda: httpx.post(url, headers=_on(node), timeout=90))
        wait_for(
            lambda: (holds / f"{write_id}.held").exists() or self.response.done(),
            timeout=30,
            message="the write never reached its hold",
        )
        assert not self.response.done(), self.response.result().text

    def release(self) -> httpx.Response:
        (self.holds / f"{self.write_id}.go").touch()
        return self.response.result(timeout=90)


def _held_as_the_primary_dies(
    factory: LiteFSClusterFactory,
    app: str,
    pool: ThreadPoolExecutor,
    holds: Path,
    write_id: str,
    hold: str,
    **env: str,
) -> tuple[LiteFSCluster, _HeldWrite]:
    """Three nodes running *app* (with *env*); a write held on node1, the primary, where *hold* says; then
    node1's LiteFS killed (-9) under it. Release it with :meth:`_HeldWrite.release`."""
    cluster = factory(app, instances=3, lease="consul", env={"DEVCLUSTER_HOLD_DIR": str(holds), **env})
    cluster.wait_replicated()
    held = _HeldWrite(pool, cluster, holds, write_id, hold=hold, node="node1")
    cluster.kill_node("node1")
    return cluster, held


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


@pytest.mark.parametrize("app", APPS)
def test_a_write_whose_commit_fails_as_litefs_dies_is_answered_unknown_not_replayed(
    litefs_real_cluster: LiteFSClusterFactory, app: str, hold_dir: Path, pool: ThreadPoolExecutor
) -> None:
    """Defect 1: the I/O error at a WAL COMMIT may follow LiteFS applying it, so it is never replayed."""
    cluster, held = _held_as_the_primary_dies(
        litefs_real_cluster, app, pool, hold_dir, "w1", "commit", DEVCLUSTER_JOURNAL_MODE="wal"
    )
    response = held.release()
    assert response.status_code == 502, response.text
    assert response.headers[OUTCOME_HEADER] == "unknown"
    assert "Check whether it ran" in response.text
    assert cluster.front.replays == []  # never run again elsewhere
    logged(cluster.instances["node1"].log_path, "POST /held-write/w1 may have run")  # logged once, at WARNING
    primary = _new_primary(cluster, "node1")
    assert _rows(cluster, primary, "w1") == 0  # here it had not reached LiteFS; the client was told to check


@pytest.mark.parametrize("app", APPS)
def test_a_write_that_cannot_open_the_database_waits_for_the_new_primary(
    litefs_real_cluster: LiteFSClusterFactory, app: str, hold_dir: Path, pool: ThreadPoolExecutor
) -> None:
    """Defect 2: CANTOPEN proves nothing ran: the write waits for a primary and is replayed there, never a 500."""
    cluster, held = _held_as_the_primary_dies(
        litefs_real_cluster, app, pool, hold_dir, "w2", "open", DEVCLUSTER_PRIMARY_WAIT="60"
    )
    release = pool.submit(held.release)
    # The dead mount names nobody: the write waits until its node's LiteFS is back and names the new primary.
    primary = _new_primary(cluster, "node1")
    cluster.start_node("node1")
    response = release.result(timeout=90)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "w2", "instance": primary}
    [replay] = cluster.front.replays
    assert (replay.from_instance, replay.to_instance) == ("node1", primary)
    cluster.wait_replicated()
    assert [_rows(cluster, node, "w2") for node in cluster.running] == [1, 1, 1]


@pytest.mark.parametrize("hold", ["open", "commit"])
@pytest.mark.parametrize("app", APPS)
def test_a_dead_mount_that_stays_dead_ends_in_503_not_500(
    litefs_real_cluster: LiteFSClusterFactory, app: str, hold: str, hold_dir: Path, pool: ThreadPoolExecutor
) -> None:
    """Defect 2, the other ending: CANTOPEN, or (rollback mode) COMMIT's lock not taken: nothing ran.

    No primary becomes known through this node's dead mount within primary_wait: 503.
    """
    cluster, held = _held_as_the_primary_dies(
        litefs_real_cluster, app, pool, hold_dir, "w3", hold, DEVCLUSTER_PRIMARY_WAIT="1"
    )
    response = held.release()
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"]
    assert OUTCOME_HEADER not in response.headers
    primary = _new_primary(cluster, "node1")
    assert _rows(cluster, primary, "w3") == 0


@pytest.mark.parametrize("app", APPS)
def test_a_waiting_write_is_not_replayed_to_the_dead_primary_named_for_an_instant(
    litefs_real_cluster: LiteFSClusterFactory, app: str
) -> None:
    """Defect 3: while node1's lease runs out its name flickers on the replicas; the write waits for the new one."""
    cluster = litefs_real_cluster(app, instances=3, lease="consul")
    cluster.wait_replicated()
    flickers = _FlickerCounter(cluster, "node2", "node1")
    cluster.kill_node("node1")
    # Until node2's LiteFS notices, it names node1 as it did (a write then is replayed to the dead node, as
    # LiteFS itself believes): wait until node2's app, on what LiteFS pushed it, no longer names node1.
    wait_for(lambda: not _names_a_primary(cluster, "node2"), timeout=10, message="node2 never lost node1")
    flickers.start()
    try:
        response = httpx.post(f"{cluster.front_url}/write", data={"id": "w4"}, headers=_on("node2"), timeout=60)
    finally:
        flickers.stop()
    assert response.status_code == 200, response.text
    primary = response.json()["instance"]
    assert primary in ("node2", "node3")
    assert [r.to_instance for r in cluster.front.replays if r.to_instance == "node1"] == []
    assert flickers.seen >= 1, "node1 was never named again while its lease ran out: nothing was tested"


def _names_a_primary(cluster: LiteFSCluster, node: str) -> bool:
    """True if *node*'s app tags its answers with a primary (absent: none known, or none established)."""
    response = httpx.get(f"{cluster.front_url}/whoami", headers=_on(node), timeout=10)
    return "fly-primary-instance" in response.headers


class _FlickerCounter:
    """Counts the ``primaryChange`` events of *node*'s LiteFS that name *dead* again (the flicker), in a thread."""

    def __init__(self, cluster: LiteFSCluster, node: str, dead: str) -> None:
        self.api_url = cluster.nodes[node].api_url
        self.dead = dead
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            for event in read_events(self.api_url, timeout=None, quiet_after=0.2):
                if self._stop.is_set():
                    return
                if isinstance(event, PrimaryChange) and event.primary == self.dead:
                    self.seen += 1
