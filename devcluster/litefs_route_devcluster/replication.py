"""Replication between local folders, shown in LiteFS's file formats.

:class:`Replicator` owns one folder per node. The primary's folder holds the
writable SQLite database; a background thread notices every committed
transaction (the database header's "file change counter", offset 24, which
SQLite bumps once per commit in rollback-journal mode), snapshots the file
under SQLite's SHARED lock, and after the configured lag writes the snapshot
into each replica's copy (only the pages that differ, under SQLite's
EXCLUSIVE lock). Each folder always reads as a LiteFS mount would:

============  ===========================  ==============================  ==================
file          primary                      replica                         no primary known
============  ===========================  ==============================  ==================
``.primary``  absent                       primary id + ``\\n``             absent
``.lag``      ``+000000000``               lag in ms (never 0)             ``+2147483647``
``<db>-pos``  its TXID/checksum            the TXID/checksum it has        unchanged
============  ===========================  ==============================  ==================

Replica copies refuse writes with SQLite's own "attempt to write a readonly
database": their header's "file format write version" (offset 18) is 3.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .files import (
    NO_PRIMARY_LAG,
    DatabaseLockTimeout,
    exclusive_lock,
    header_counter,
    is_wal,
    patch_header,
    read_database,
    write_database,
    write_lag,
    write_position,
    write_primary,
)

__all__ = ["Replicator", "Snapshot"]

logger = logging.getLogger("litefs_route_devcluster")

# How often (at most) a replica's .lag is rewritten while it stays behind.
_LAG_REFRESH = 0.05
_LOCK_TIMEOUT = 2.0


@dataclass(frozen=True)
class Snapshot:
    """The primary's database as of one transaction."""

    seq: int
    txid: int
    checksum: int
    counter: int
    data: bytes
    #: time.monotonic() when the commit was noticed.
    at: float


@dataclass
class _Node:
    id: str
    folder: str
    db_path: str
    fd: int
    txid: int = 0
    checksum: int = 0
    applied_seq: int = -1
    online: bool = True
    lag_ms: int | None = None
    lag_written_at: float = 0.0


def _checksum(data: bytes) -> int:
    """A 64-bit checksum of the content, blind to the header bytes that differ between copies."""
    normal = bytearray(data[:100])
    if len(normal) == 100:
        normal[18] = 1
        normal[24:28] = normal[92:96] = b"\0\0\0\0"
    return int.from_bytes(hashlib.blake2b(bytes(normal) + data[100:], digest_size=8).digest(), "big")


def _connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=1.0)


class Replicator:
    """Replicates *database* from the primary's folder to the others. See the module docstring.

    *folders* maps node id to its folder (created if missing). *primary* is
    the first primary. *lag* is in seconds. Call :meth:`start`, and
    :meth:`close` when done.
    """

    def __init__(
        self,
        folders: Mapping[str, str],
        primary: str,
        *,
        database: str = "app.db",
        lag: float = 0.0,
        poll_interval: float = 0.002,
    ) -> None:
        if primary not in folders:
            raise ValueError(f"unknown primary {primary!r}")
        self.database = database
        self.poll_interval = poll_interval
        self._lag = float(lag)
        self._lock = threading.RLock()
        self._promote_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshots: list[Snapshot] = []
        self._seq = 0
        self._conn: sqlite3.Connection | None = None
        self._last_counter: int | None = None
        self._warned_wal = False
        self._nodes: dict[str, _Node] = {}
        for node_id, folder in folders.items():
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, database)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            self._nodes[node_id] = _Node(node_id, folder, path, fd)
        self._primary: str | None = None
        self._init_primary(primary)

    # -- set-up --------------------------------------------------------------

    def _init_primary(self, primary: str) -> None:
        node = self._nodes[primary]
        conn = _connect(node.db_path)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            if os.fstat(node.fd).st_size == 0:
                conn.execute("PRAGMA user_version=0")  # writes the header: an empty file has none
        finally:
            conn.close()
        with exclusive_lock(node.fd, _LOCK_TIMEOUT, node.db_path):
            current = read_database(node.fd)
            others = [header_counter(os.pread(n.fd, 100, 0)) for n in self._nodes.values() if n is not node]
            counter = max([header_counter(current), *others])
            data = patch_header(current, writable=True, counter=counter if counter > header_counter(current) else None)
            write_database(node.fd, data, current)
        node.txid = header_counter(data)
        self._become_primary(node, data)
        for other in self._nodes.values():
            if other is not node:
                self._sync(other, time.monotonic(), force=True)

    # -- life cycle --------------------------------------------------------

    def start(self) -> Replicator:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="devcluster-replicator", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            for node in self._nodes.values():
                if node.fd >= 0:
                    os.close(node.fd)
                    node.fd = -1

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.tick()
            except Exception:
                logger.exception("replicator: tick failed")

    # -- public state --------------------------------------------------------

    @property
    def primary(self) -> str | None:
        """The current primary's id; None during a failover's no-primary period."""
        return self._primary

    @property
    def lag(self) -> float:
        return self._lag

    def set_lag(self, seconds: float) -> None:
        """Change the replication lag (seconds); applies to commits already waiting too."""
        if seconds < 0:
            raise ValueError("lag must be >= 0")
        self._lag = float(seconds)
        logger.info("replication lag set to %s s", seconds)

    def folder(self, node_id: str) -> str:
        return self._nodes[node_id].folder

    def db_path(self, node_id: str) -> str:
        return self._nodes[node_id].db_path

    def positions(self) -> dict[str, int]:
        """Node id -> the TXID its copy holds."""
        with self._lock:
            return {node.id: node.txid for node in self._nodes.values()}

    def set_online(self, node_id: str, online: bool) -> None:
        """An offline node's folder is left alone (its LiteFS is "down"); back online, it catches up."""
        with self._lock:
            node = self._nodes[node_id]
            node.online = online
            if online and node.id != self._primary and self._primary is not None:
                self._sync(node, time.monotonic())

    def is_replicated(self) -> bool:
        """True if every online replica holds the primary's latest committed transaction."""
        with self._lock:
            if self._primary is None:
                return False
            primary = self._nodes[self._primary]
            if header_counter(os.pread(primary.fd, 100, 0)) != self._last_counter:
                return False  # a commit not yet noticed
            return all(
                node.txid == primary.txid and node.checksum == primary.checksum
                for node in self._nodes.values()
                if node.online
            )

    def wait_replicated(self, timeout: float = 10.0) -> dict[str, int]:
        """Wait until :meth:`is_replicated`; returns :meth:`positions`. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while not self.is_replicated():
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas did not catch up within {timeout} s: {self.positions()}")
            time.sleep(0.005)
        return self.positions()

    # -- the loop ------------------------------------------------------------

    def tick(self) -> None:
        """One round: notice commits on the primary, feed replicas whose lag has passed."""
        with self._lock:
            if self._primary is None:
                return
            primary = self._nodes[self._primary]
            if header_counter(os.pread(primary.fd, 100, 0)) != self._last_counter:
                self._snapshot_primary(primary)
            now = time.monotonic()
            for node in self._nodes.values():
                if node is not primary and node.online:
                    self._sync(node, now)
                    self._write_lag(node, now)
            self._trim()

    def _snapshot_primary(self, primary: _Node) -> Snapshot | None:
        conn = self._conn
        assert conn is not None
        try:
            # SHARED lock: no commit can land in the file while we read it
            # (and SQLite rolls back a hot journal left by a crashed writer).
            conn.execute("BEGIN")
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                data = read_database(primary.fd)
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            logger.debug("replicator: primary busy (%s); retrying", exc)
            return None
        return self._record(primary, data)

    def _record(self, primary: _Node, data: bytes) -> Snapshot | None:
        counter = header_counter(data)
        if counter == self._last_counter:
            return None
        if is_wal(data) and not self._warned_wal:
            self._warned_wal = True
            logger.error(
                "%s is in WAL mode: the dev cluster only replicates rollback-journal databases", primary.db_path
            )
        delta = 1 if self._last_counter is None else (counter - self._last_counter) & 0xFFFFFFFF
        self._last_counter = counter
        primary.txid += delta
        primary.checksum = _checksum(data)
        self._seq += 1
        snap = Snapshot(self._seq, primary.txid, primary.checksum, counter, data, time.monotonic())
        self._snapshots.append(snap)
        primary.applied_seq = snap.seq
        write_position(primary.folder, self.database, primary.txid, primary.checksum)
        logger.debug("replicator: %s committed TXID %d", primary.id, primary.txid)
        return snap

    def _sync(self, node: _Node, now: float, *, force: bool = False) -> None:
        """Apply the newest snapshot whose lag has passed (or the newest, with *force*)."""
        target: Snapshot | None = None
        for snap in reversed(self._snapshots):
            if force or snap.at + self._lag <= now:
                target = snap
                break
        if target is None or target.seq <= node.applied_seq:
            return
        try:
            with exclusive_lock(node.fd, _LOCK_TIMEOUT, node.db_path):
                current = read_database(node.fd)
                old_counter = header_counter(current) if len(current) >= 100 else -1
                # Readers keep their page cache while the counter is unchanged:
                # never let new content arrive under an old counter.
                counter = target.counter if target.counter > old_counter else old_counter + 1
                data = patch_header(target.data, writable=False, counter=counter)
                write_database(node.fd, data, current)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(node.db_path + "-journal")  # a stale one from a life as primary
        except DatabaseLockTimeout as exc:
            logger.warning("replicator: %s; will retry", exc)
            return
        node.applied_seq = target.seq
        node.txid = target.txid
        node.checksum = target.checksum
        write_position(node.folder, self.database, node.txid, node.checksum)
        self._write_lag(node, now, force=True)

    def _replica_lag_ms(self, node: _Node, now: float) -> int:
        for snap in self._snapshots:
            if snap.seq > node.applied_seq:
                return max(1, int((now - snap.at) * 1000))
        return 1  # caught up; never 0, which means "I hold the lease"

    def _write_lag(self, node: _Node, now: float, *, force: bool = False) -> None:
        lag = self._replica_lag_ms(node, now)
        if lag == node.lag_ms:
            return
        if not force and node.lag_ms is not None and node.lag_ms > 1 and now - node.lag_written_at < _LAG_REFRESH:
            return
        write_lag(node.folder, lag)
        node.lag_ms = lag
        node.lag_written_at = now

    def _trim(self) -> None:
        online = [n.applied_seq for n in self._nodes.values() if n.online and n.id != self._primary]
        keep_from = min(online, default=self._seq)
        while len(self._snapshots) > 1 and self._snapshots[0].seq < keep_from:
            self._snapshots.pop(0)

    # -- failover ------------------------------------------------------------

    def promote(self, node_id: str, *, handover: float = 0.0, graceful: bool = True) -> None:
        """Move the primary to *node_id*.

        1. Every folder shows "no primary" (no ``.primary``, ``.lag``
           ``+2147483647``) and the old primary's copy turns read-only, after
           its last transaction (SQLite's locks are honoured).
        2. That state lasts *handover* seconds.
        3. The new primary's copy becomes writable, holding the old primary's
           last transaction when *graceful* (LiteFS's handoff) or only what
           it had replicated otherwise (a crash: unreplicated writes are lost).
           Its ``.lag`` turns to ``+000000000`` and the replicas' ``.primary``
           to its id; they catch up after the lag.
        """
        if node_id not in self._nodes:
            raise KeyError(f"no node {node_id!r}")
        with self._promote_lock:
            with self._lock:
                old = self._primary
                if old == node_id:
                    return
                logger.info("failover: %s -> %s (handover %s s, graceful=%s)", old, node_id, handover, graceful)
                for node in self._nodes.values():
                    write_primary(node.folder, None)
                    write_lag(node.folder, NO_PRIMARY_LAG)
                    node.lag_ms = NO_PRIMARY_LAG
                self._primary = None  # after the files: whoever sees None sees them too
                final = self._demote(self._nodes[old]) if old is not None else None
            if handover > 0:
                time.sleep(handover)
            with self._lock:
                node = self._nodes[node_id]
                with exclusive_lock(node.fd, _LOCK_TIMEOUT * 5, node.db_path):
                    current = read_database(node.fd)
                    if graceful and final is not None:
                        base, node.txid = final, self._nodes[old].txid if old is not None else node.txid
                    else:
                        base = current
                    counter = 1 + max(header_counter(os.pread(n.fd, 100, 0)) for n in self._nodes.values())
                    data = patch_header(base, writable=True, counter=counter)
                    write_database(node.fd, data, current)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(node.db_path + "-journal")
                self._become_primary(node, data)

    def _demote(self, node: _Node) -> bytes | None:
        """Make the primary's copy read-only; returns its last content."""
        if self._conn is not None:
            self._snapshot_primary(node)  # settles a hot journal; notices a last commit
            self._conn.close()
            self._conn = None
        try:
            with exclusive_lock(node.fd, _LOCK_TIMEOUT * 5, node.db_path):
                data = read_database(node.fd)
                self._record(node, data)  # a commit that landed after the snapshot above
                write_database(node.fd, patch_header(data, writable=False, counter=header_counter(data) + 1), data)
        except DatabaseLockTimeout:
            logger.exception("failover: could not lock the old primary %s; its copy stays as it is", node.id)
            return None
        return data

    def _become_primary(self, node: _Node, data: bytes) -> None:
        self._conn = _connect(node.db_path)
        self._primary = node.id
        self._last_counter = None
        node.txid -= 1  # _record counts the promotion's snapshot as one step
        self._record(node, data)
        node.lag_ms = 0
        write_lag(node.folder, 0)
        write_primary(node.folder, None)
        now = time.monotonic()
        for other in self._nodes.values():
            if other is not node:
                write_primary(other.folder, node.id)
                other.lag_ms = None
                self._write_lag(other, now, force=True)


def resolve_ids(ids: Iterable[str] | int) -> list[str]:
    """``3`` -> ``["node1", "node2", "node3"]``; a list of ids is checked and returned."""
    if isinstance(ids, int):
        if ids < 1:
            raise ValueError("at least one instance is needed")
        return [f"node{i}" for i in range(1, ids + 1)]
    out = list(ids)
    if len(set(out)) != len(out) or not out:
        raise ValueError(f"instance ids must be unique and not empty: {out!r}")
    return out


PollCondition = Callable[[], bool]
