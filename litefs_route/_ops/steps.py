"""After-release steps: run a command on the primary once every live instance runs a release, once per release.

:func:`run_after_release` runs a step on the primary once every live
instance reports the release (:mod:`.registry`), exactly once per release
and step for the cluster: it is claimed in the same database (in
``<table>_steps``) before it runs and marked done after, so a restart, a
failover or a second candidate does not run it again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._mount import default_instance_id, read_node_state
from .connections import DATABASE_POLL_INTERVAL, reading
from .registry import DEFAULT_TABLE, GONE_AFTER, InstanceRecord, instances, schema_sql, table_name, wait_for_release
from .waits import WaitTimeout

__all__ = ["StepClaimed", "StepRecord", "run_after_release", "step_record"]


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


def step_record(
    db_path: str | os.PathLike[str], release: str, step: str, *, table: str = DEFAULT_TABLE
) -> StepRecord | None:
    """The step's record, or None if nobody claimed it (read only)."""
    table = table_name(table)
    with reading(os.fspath(db_path)) as conn:
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
    table = table_name(table)
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
        conn.executescript(schema_sql(table))
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
        time.sleep(DATABASE_POLL_INTERVAL)
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
        time.sleep(DATABASE_POLL_INTERVAL * 5)
