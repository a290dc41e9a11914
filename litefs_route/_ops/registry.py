"""The release registry: which release each instance runs, in the replicated database itself.

A small table whose shape never changes (``table``, default
``litefs_route_instances``; the after-release steps keep theirs in
``<table>_steps``, see :mod:`.steps`):

- Each instance records its id, its release (default ``$FLY_IMAGE_REF``), the
  schema version its code needs (if given), when it started and when it was
  last seen. It registers at start and renews every :data:`RENEW_EVERY`
  seconds (:func:`register`, :class:`Heartbeat`, ``litefs-route release
  heartbeat``). On a replica the write goes through LiteFS's HALT lock
  (:func:`~litefs_route.halt_lock`: a small, infrequent write is what it
  is for); on the primary directly.
- An instance not seen for :data:`GONE_AFTER` seconds counts as gone: it no
  longer holds an after-release step back.

Times are wall-clock seconds (``time.time()``): instances compare them across
machines, whose clocks Fly keeps in sync.
"""

from __future__ import annotations

import atexit
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._log_fields import log_fields
from .._mount import default_instance_id
from .connections import DATABASE_POLL_INTERVAL, reading, writing
from .waits import WaitTimeout

__all__ = [
    "DEFAULT_TABLE",
    "GONE_AFTER",
    "RENEW_EVERY",
    "Heartbeat",
    "InstanceRecord",
    "default_release",
    "instances",
    "register",
    "schema_sql",
    "table_name",
    "wait_for_release",
    "waiting_for",
]

logger = logging.getLogger("litefs_route")

DEFAULT_TABLE = "litefs_route_instances"
#: Seconds between two renewals of an instance's record.
RENEW_EVERY = 30.0
#: Seconds after which an instance not seen counts as gone (three missed renewals).
GONE_AFTER = 90.0


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One instance as the registry has it."""

    instance: str
    release: str
    #: The schema version its code needs; None if it did not say.
    schema: int | None
    started_at: float
    seen_at: float


def default_release() -> str | None:
    """This instance's release: ``$FLY_IMAGE_REF`` (Fly sets it to the image deployed), else None."""
    return os.environ.get("FLY_IMAGE_REF") or None


def table_name(table: str) -> str:
    if not table.replace("_", "").isalnum() or not table[0].isalpha():
        raise ValueError(f"table must be a plain SQL name (letters, digits, _), got {table!r}")
    return table


def schema_sql(table: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (instance TEXT PRIMARY KEY, release TEXT NOT NULL, "
        "schema_version INTEGER, started_at REAL NOT NULL, seen_at REAL NOT NULL);"
        f"CREATE TABLE IF NOT EXISTS {table}_steps (release TEXT NOT NULL, step TEXT NOT NULL, "
        "instance TEXT NOT NULL, started_at REAL NOT NULL, done_at REAL, PRIMARY KEY (release, step));"
    )


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
    table = table_name(table)
    now = time.time()
    with writing(path, instance, halt_timeout) as conn:
        conn.executescript(schema_sql(table))
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
    table = table_name(table)
    cutoff = -float("inf") if gone_after is None else (now if now is not None else time.time()) - gone_after
    with reading(os.fspath(db_path)) as conn:
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
        time.sleep(min(DATABASE_POLL_INTERVAL * 5, max(0.0, deadline - time.monotonic())))


#: Seconds :meth:`Heartbeat.stop` waits for a renewal in flight: its HALT lock wait and its write.
STOP_TIMEOUT = 15.0


class Heartbeat:
    """Renews this instance's record every *every* seconds in a daemon thread (the app's process).

    ``Heartbeat(db_path, release=...).start()`` at the app's start: it
    registers at once (raising if that fails), then renews; a failed renewal
    is logged and retried at the next one. ``stop()`` ends it, and so does
    the interpreter's exit: a renewal in flight is let finish first. (A
    process that exited in the middle of one on a replica left LiteFS v0.5.14
    stuck: closing the HALT lock's file made it wait for the database's write
    lock, most likely held by the same exiting process's SQLite connection,
    and the replica's stream waited behind it.)
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
        atexit.register(self.stop)  # before the interpreter exits: no renewal cut off halfway
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

    def stop(self, timeout: float | None = STOP_TIMEOUT) -> bool:
        """End the renewals, waiting at most *timeout* s for one in flight; True if none is left running."""
        self._stopped.set()
        atexit.unregister(self.stop)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

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
