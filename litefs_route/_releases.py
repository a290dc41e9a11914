"""Release-aware migrations: every instance records its release; after-release steps wait for all of them.

A registry in the replicated database itself, two small tables whose shape
never changes (``table``, default ``litefs_route_instances``, and
``<table>_steps``):

- Each instance records its id, its release (default ``$FLY_IMAGE_REF``), the
  schema version its code needs (if given), when it started and when it was
  last seen. It registers at start and renews every :data:`RENEW_EVERY`
  seconds (:func:`register`, :class:`Heartbeat`, ``litefs-route release
  heartbeat``). On a replica the write goes through LiteFS's HALT lock
  (:func:`~litefs_route._ops.halt_lock`: a small, infrequent write is what it
  is for); on the primary directly.
- An instance not seen for :data:`GONE_AFTER` seconds counts as gone: it no
  longer holds an after-release step back.
- :func:`run_after_release` runs a step on the primary once every live
  instance reports the release, exactly once per release and step for the
  cluster: it is claimed in the same database before it runs and marked done
  after, so a restart, a failover or a second candidate does not run it
  again.
- :func:`wait_for_schema`: a replica whose code needs schema N waits until
  replication delivers it (``PRAGMA user_version``, or a query).
- :func:`promote`: move the lease to this node through LiteFS's HTTP API.

Times are wall-clock seconds (``time.time()``): instances compare them across
machines, whose clocks Fly keeps in sync.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import pathlib
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ._log_fields import log_fields
from ._mount import default_instance_id, read_node_state
from ._ops import WaitTimeout, halt_lock, wait_for_primary

__all__ = [
    "DEFAULT_TABLE",
    "GONE_AFTER",
    "RENEW_EVERY",
    "Heartbeat",
    "InstanceRecord",
    "StepClaimed",
    "StepRecord",
    "default_release",
    "instances",
    "promote",
    "register",
    "run_after_release",
    "step_record",
    "wait_for_release",
    "wait_for_schema",
    "waiting_for",
]

logger = logging.getLogger("litefs_route")

DEFAULT_TABLE = "litefs_route_instances"
#: Seconds between two renewals of an instance's record.
RENEW_EVERY = 30.0
#: Seconds after which an instance not seen counts as gone (three missed renewals).
GONE_AFTER = 90.0
_POLL = 0.1


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One instance as the registry has it."""

    instance: str
    release: str
    #: The schema version its code needs; None if it did not say.
    schema: int | None
    started_at: float
    seen_at: float


@dataclass(frozen=True, slots=True)
class StepRecord:
    """An after-release step: who claimed it, when, and when it finished (None: not finished)."""

    release: str
    step: str
    instance: str
    started_at: float
    done_at: float | None


class StepClaimed(Exception):
    """The step was claimed by a run that never finished it: its instance is gone, or it is this instance's own.

    *own*: the claim is this instance's, left by an earlier life of it (a
    Machine that died mid-step and restarted with the same id): no run of
    it is under way, however live the instance looks.
    """

    def __init__(self, record: StepRecord, *, own: bool = False) -> None:
        why = "this instance restarted since" if own else f"{record.instance} is gone"
        super().__init__(
            f"step {record.step!r} of release {record.release!r} was claimed by {record.instance} at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(record.started_at))} UTC and not finished, "
            f"and {why}"
        )
        self.record = record


def default_release() -> str | None:
    """This instance's release: ``$FLY_IMAGE_REF`` (Fly sets it to the image deployed), else None."""
    return os.environ.get("FLY_IMAGE_REF") or None


def _table_name(table: str) -> str:
    if not table.replace("_", "").isalnum() or not table[0].isalpha():
        raise ValueError(f"table must be a plain SQL name (letters, digits, _), got {table!r}")
    return table


def _schema_sql(table: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (instance TEXT PRIMARY KEY, release TEXT NOT NULL, "
        "schema_version INTEGER, started_at REAL NOT NULL, seen_at REAL NOT NULL);"
        f"CREATE TABLE IF NOT EXISTS {table}_steps (release TEXT NOT NULL, step TEXT NOT NULL, "
        "instance TEXT NOT NULL, started_at REAL NOT NULL, done_at REAL, PRIMARY KEY (release, step));"
    )


@contextlib.contextmanager
def _writing(db_path: str, instance_id: str | None, halt_timeout: float) -> Iterator[sqlite3.Connection]:
    """A connection that may write: under the HALT lock on a replica, directly on the primary."""
    with halt_lock(db_path, timeout=halt_timeout, instance_id=instance_id):
        conn = sqlite3.connect(db_path, timeout=10, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()


@contextlib.contextmanager
def _reading(db_path: str) -> Iterator[sqlite3.Connection]:
    uri = pathlib.Path(db_path).resolve().as_uri() + "?mode=ro"  # escaped: a path may hold ? or #
    conn = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def register(
    db_path: str | os.PathLike[str],
    *,
    release: str | None = None,
    schema: int | None = None,
    instance_id: str | None = None,
    starting: bool = True,
    table: str = DEFAULT_TABLE,
    halt_timeout: float = 10.0,
) -> InstanceRecord:
    """Record this instance in the registry (create the tables if needed); returns the record written.

    *starting*: this is the instance's start (its ``started_at`` is now);
    False for a renewal (kept). *release* defaults to ``$FLY_IMAGE_REF``.
    Raises ValueError without a release, :class:`~litefs_route.HaltLockError`
    when a replica cannot get the HALT lock.
    """
    path = os.fspath(db_path)
    release = release or default_release()
    if not release:
        raise ValueError("no release: give one, or set $FLY_IMAGE_REF")
    instance = instance_id or default_instance_id()
    table = _table_name(table)
    now = time.time()
    with _writing(path, instance, halt_timeout) as conn:
        conn.executescript(_schema_sql(table))
        conn.execute(
            f"INSERT INTO {table} (instance, release, schema_version, started_at, seen_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (instance) DO UPDATE SET release = excluded.release, "
            "schema_version = excluded.schema_version, seen_at = excluded.seen_at, "
            f"started_at = CASE WHEN ? THEN excluded.started_at ELSE {table}.started_at END",
            (instance, release, schema, now, now, starting),
        )
        row = conn.execute(
            f"SELECT instance, release, schema_version, started_at, seen_at FROM {table} WHERE instance = ?",
            (instance,),
        ).fetchone()
    return InstanceRecord(*row)


def instances(
    db_path: str | os.PathLike[str],
    *,
    table: str = DEFAULT_TABLE,
    gone_after: float | None = GONE_AFTER,
    now: float | None = None,
) -> list[InstanceRecord]:
    """The instances in the registry, by id; only those seen within *gone_after* seconds (None: all). Read only."""
    table = _table_name(table)
    cutoff = -float("inf") if gone_after is None else (now if now is not None else time.time()) - gone_after
    with _reading(os.fspath(db_path)) as conn:
        try:
            rows = conn.execute(
                f"SELECT instance, release, schema_version, started_at, seen_at FROM {table} "
                "WHERE seen_at >= ? ORDER BY instance",
                (cutoff,),
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # nothing registered yet
            raise
    return [InstanceRecord(*row) for row in rows]


def waiting_for(
    db_path: str | os.PathLike[str], release: str, *, table: str = DEFAULT_TABLE, gone_after: float = GONE_AFTER
) -> list[InstanceRecord]:
    """The live instances that do not run *release* yet."""
    return [r for r in instances(db_path, table=table, gone_after=gone_after) if r.release != release]


def _describe(records: Sequence[InstanceRecord]) -> str:
    now = time.time()
    return ", ".join(f"{r.instance} (on {r.release}, seen {now - r.seen_at:.0f} s ago)" for r in records)


def wait_for_release(
    db_path: str | os.PathLike[str],
    release: str,
    timeout: float,
    *,
    table: str = DEFAULT_TABLE,
    gone_after: float = GONE_AFTER,
    on_wait: Callable[[list[InstanceRecord]], None] | None = None,
    report_every: float = 10.0,
) -> list[InstanceRecord]:
    """Block until every live instance reports *release* (at least one does); returns them.

    *on_wait* is told who is waited for, at once and then every
    *report_every* seconds while it changes nothing. Raises
    :class:`~litefs_route.WaitTimeout` after *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    reported_at = -float("inf")
    last: list[InstanceRecord] = []
    while True:
        live = instances(db_path, table=table, gone_after=gone_after)
        behind = [r for r in live if r.release != release]
        if live and not behind:
            return live
        if time.monotonic() >= deadline:
            who = _describe(behind) if behind else "no instance has registered"
            raise WaitTimeout(f"not every instance runs {release} after {timeout:g} s: waiting for {who}", behind)
        if on_wait is not None and (behind != last or time.monotonic() - reported_at >= report_every):
            on_wait(behind)
            reported_at, last = time.monotonic(), behind
        time.sleep(min(_POLL * 5, max(0.0, deadline - time.monotonic())))


def step_record(
    db_path: str | os.PathLike[str], release: str, step: str, *, table: str = DEFAULT_TABLE
) -> StepRecord | None:
    """The step's record, or None if nobody claimed it (read only)."""
    table = _table_name(table)
    with _reading(os.fspath(db_path)) as conn:
        try:
            row = conn.execute(_select_step(table), (release, step)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
    return StepRecord(*row) if row else None


def _select_step(table: str) -> str:
    return f"SELECT release, step, instance, started_at, done_at FROM {table}_steps WHERE release = ? AND step = ?"


def _claim(conn: sqlite3.Connection, table: str, release: str, step: str, instance: str) -> StepRecord | None:
    """Claim the step in one write transaction; None if claimed now, else the record that was there."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(_select_step(table), (release, step)).fetchone()
        if row is None:
            conn.execute(
                f"INSERT INTO {table}_steps (release, step, instance, started_at) VALUES (?, ?, ?, ?)",
                (release, step, instance, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return StepRecord(*row) if row else None


class _Same:
    """The default of run_after_release's *litefs_dir*: the database's own directory."""


_SAME = _Same()


def run_after_release(
    db_path: str | os.PathLike[str],
    release: str,
    cmd: Sequence[str],
    timeout: float,
    *,
    step: str = "after-release",
    instance_id: str | None = None,
    litefs_dir: str | _Same | None = _SAME,
    table: str = DEFAULT_TABLE,
    gone_after: float = GONE_AFTER,
    on_wait: Callable[[list[InstanceRecord]], None] | None = None,
) -> int | None:
    """On the primary: once every live instance runs *release*, run *cmd*, once per release and step for the cluster.

    Returns the command's exit code, or None if the step already ran (or
    another run of it finished meanwhile). The step is claimed before *cmd*
    runs and marked done when it exits 0; a failed run gives the claim back,
    so the next attempt runs it again. Raises :class:`StepClaimed` if a run
    that never finished holds it (check by hand, then delete its row from
    ``<table>_steps``), :class:`~litefs_route.WaitTimeout` on timeout, and
    RuntimeError if this node is not the primary. *litefs_dir*: the mount
    whose role is checked (default: the database's directory; None:
    standalone).
    """
    path = os.fspath(db_path)
    instance = instance_id or default_instance_id()
    table = _table_name(table)
    deadline = time.monotonic() + timeout
    if _finished_elsewhere(path, release, step, table, gone_after, deadline, instance):
        return None
    left = max(0.0, deadline - time.monotonic())
    wait_for_release(path, release, left, table=table, gone_after=gone_after, on_wait=on_wait)
    mount = (os.path.dirname(path) or ".") if isinstance(litefs_dir, _Same) else litefs_dir
    state = read_node_state(mount, instance)  # again: a failover may have happened while it waited
    if not state.is_primary:
        raise RuntimeError(f"not the primary any more ({state.detail}): the step runs on the primary")
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    lock = _hold_run_lock(path, table, release, step, deadline)
    try:
        conn.executescript(_schema_sql(table))
        while _claim(conn, table, release, step, instance) is not None:
            if _finished_elsewhere(path, release, step, table, gone_after, deadline, instance, holding=True):
                return None  # (else the other run failed and gave the claim back: claim it again)
        try:
            code = subprocess.call(list(cmd))
        except FileNotFoundError:
            code = 127  # as sh says it: the command never ran, the claim goes back
        except OSError:
            code = 126
        if code < 0:
            code = 128 - code  # killed by a signal, as sh reports it
        if code == 0:
            conn.execute(
                f"UPDATE {table}_steps SET done_at = ? WHERE release = ? AND step = ?", (time.time(), release, step)
            )
        else:
            conn.execute(f"DELETE FROM {table}_steps WHERE release = ? AND step = ?", (release, step))
        return code
    finally:
        conn.close()
        lock.close()


def _run_lock_path(path: str, table: str, release: str, step: str) -> str:
    """The lock file this instance's run of the step holds: two runs on one instance tell each other apart by it."""
    key = hashlib.sha256(f"{os.path.realpath(path)}\0{table}\0{release}\0{step}".encode()).hexdigest()[:32]
    return os.path.join(tempfile.gettempdir(), f"litefs-route-step-{key}.lock")


def _hold_run_lock(path: str, table: str, release: str, step: str, deadline: float) -> _RunLock:
    """The run lock, held (until closed, or the process dies); waits for another local run until *deadline*."""
    lock = _RunLock(_run_lock_path(path, table, release, step))
    while not lock.try_acquire():
        if time.monotonic() >= deadline:
            lock.close()
            raise WaitTimeout(f"step {step!r} of release {release!r} is being run by another process of this instance")
        time.sleep(_POLL)
    return lock


class _RunLock:
    """An ``flock`` on a local file: held by a run of a step while it claims and runs it."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        os.close(self.fd)  # releases the lock


def _local_run_under_way(path: str, table: str, release: str, step: str) -> bool:
    """True if a process of this instance holds the step's run lock now."""
    lock = _RunLock(_run_lock_path(path, table, release, step))
    try:
        return not lock.try_acquire()
    finally:
        lock.close()


def _finished_elsewhere(
    path: str,
    release: str,
    step: str,
    table: str,
    gone_after: float,
    deadline: float,
    me: str,
    *,
    holding: bool = False,
) -> bool:
    """True if the step is done; False if nobody holds it. A run under way (its instance live) is waited for.

    Raises :class:`StepClaimed` for a claim whose instance is gone (a run
    that never finished), or that is *me*'s own (this run has not claimed it
    yet, so an earlier life of this instance did and died), and
    :class:`~litefs_route.WaitTimeout` at *deadline* while a live instance
    still holds it. *holding*: this run holds the run lock (no other local run is under way).
    """
    while True:
        record = step_record(path, release, step, table=table)
        if record is None:
            return False
        if record.done_at is not None:
            return True
        # This instance's own claim, held by no process of it: left by an
        # earlier life of it (same Machine ID after a restart). Never waited for.
        if record.instance == me and (holding or not _local_run_under_way(path, table, release, step)):
            raise StepClaimed(record, own=True)
        live = {r.instance for r in instances(path, table=table, gone_after=gone_after)}
        if record.instance not in live:
            raise StepClaimed(record)
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"step {step!r} of release {release!r} is being run by {record.instance}, which is live: "
                "it may still be running",
                record,
            )
        time.sleep(_POLL * 5)


def wait_for_schema(
    db_path: str | os.PathLike[str],
    version: int,
    timeout: float,
    *,
    query: str = "PRAGMA user_version",
    on_wait: Callable[[int | None], None] | None = None,
) -> int:
    """Block until *query* (first column of the first row, an integer) is at least *version*; returns it.

    Read only: for a replica whose code needs schema *version*, which
    replication delivers. A missing table counts as version None (not yet).
    Raises :class:`~litefs_route.WaitTimeout` after *timeout* seconds.
    """
    path = os.fspath(db_path)
    deadline = time.monotonic() + timeout
    told = False
    while True:
        now = _schema_now(path, query)
        if now is not None and now >= version:
            return now
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"the schema is at {now} after {timeout:g} s, not {version}", now)
        if on_wait is not None and not told:
            on_wait(now)
            told = True
        time.sleep(_POLL)


def _schema_now(path: str, query: str) -> int | None:
    """The schema version now; None while the database or its table is not there yet. ValueError for a bad query."""
    try:
        with _reading(path) as conn:
            row = conn.execute(query).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc) or "unable to open" in str(exc):
            return None  # not replicated yet
        raise ValueError(f"the schema query {query!r} failed: {exc}") from exc
    if not row or row[0] is None:
        return None
    if isinstance(row[0], bool) or not isinstance(row[0], int):
        raise ValueError(f"the schema query {query!r} gave {row[0]!r}, not an integer")
    return row[0]


def promote(
    litefs_dir: str, api_url: str, timeout: float, *, instance_id: str | None = None, retry_every: float = 0.5
) -> None:
    """Move the lease to this node: LiteFS's ``POST /promote`` (what ``litefs run -promote`` asks), until it holds it.

    LiteFS answers an error while no primary is connected or a handoff
    fails; it is asked again every *retry_every* seconds. Raises
    :class:`~litefs_route.WaitTimeout` (with LiteFS's last answer) after
    *timeout* seconds; returns at once on the primary.
    """
    instance = instance_id or default_instance_id()
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if read_node_state(litefs_dir, instance).is_primary:
            return
        try:
            last = _post(api_url, "/promote", min(10.0, max(0.1, deadline - time.monotonic())))
        except OSError as exc:
            last = f"cannot reach LiteFS at {api_url}: {exc}"
        if not last:  # accepted: the handoff is under way
            try:
                wait_for_primary(
                    litefs_dir, max(0.0, deadline - time.monotonic()), this_node=True, instance_id=instance
                )
                return
            except WaitTimeout as exc:
                last = str(exc)
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"not promoted after {timeout:g} s: {last}", last)
        time.sleep(retry_every)


def _post(api_url: str, path: str, timeout: float) -> str:
    """POST *path*: "" on 2xx, else LiteFS's error text."""
    parts = urlsplit(api_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 20202, timeout=timeout)
    try:
        conn.request("POST", path)
        response = conn.getresponse()
        body = response.read(4096).decode(errors="replace").strip()
        return "" if 200 <= response.status < 300 else f"LiteFS answered {response.status}: {body}"
    except http.client.HTTPException as exc:
        return f"LiteFS's answer is not HTTP: {exc!r}"
    finally:
        conn.close()


class Heartbeat:
    """Renews this instance's record every *every* seconds in a daemon thread (the app's process).

    ``Heartbeat(db_path, release=...).start()`` at the app's start: it
    registers at once (raising if that fails), then renews; a failed renewal
    is logged and retried at the next one. ``stop()`` ends it.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        release: str | None = None,
        schema: int | None = None,
        instance_id: str | None = None,
        table: str = DEFAULT_TABLE,
        every: float = RENEW_EVERY,
    ) -> None:
        self.db_path = os.fspath(db_path)
        self.release, self.schema, self.instance_id, self.table = release, schema, instance_id, table
        self.every = every
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self.run, name="litefs-route release heartbeat", daemon=True)

    def start(self) -> InstanceRecord:
        record = self.renew(starting=True)
        self._thread.start()
        return record

    def renew(self, *, starting: bool = False) -> InstanceRecord:
        return register(
            self.db_path,
            release=self.release,
            schema=self.schema,
            instance_id=self.instance_id,
            table=self.table,
            starting=starting,
        )

    def stop(self) -> None:
        self._stopped.set()

    def run(self, on_error: Callable[[Exception], None] | None = None) -> None:
        """Renew every *every* seconds until :meth:`stop` (blocking; :meth:`start` runs it in a thread).

        A failed renewal goes to *on_error* (default: logged) and is tried
        again at the next: :data:`GONE_AFTER` allows two misses.
        """
        while not self._stopped.wait(self.every):
            try:
                self.renew()
            except Exception as exc:
                if on_error is None:
                    logger.warning(
                        "renewing this instance's release record failed",
                        exc_info=True,
                        extra=log_fields(event="release_renewal_failed", reason=repr(exc)),
                    )
                else:
                    on_error(exc)
