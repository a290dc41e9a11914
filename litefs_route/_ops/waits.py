"""Waiting on the cluster: until a primary is known, this node is synced, a TXID or a schema version arrives.

Deploy scripts and migration guards need to block until something holds:

- :func:`wait_for_primary`: until *a* primary is known (``this_node=True``:
  until *this* node is the primary);
- :func:`wait_for_sync`: until this node's ``.lag`` is at most ``max_lag_ms``;
- :func:`wait_for_txid`: until a database's TXID reaches a value (for
  example one printed by ``litefs-route status`` on the primary);
- :func:`wait_for_schema`: a replica whose code needs schema N waits until
  replication delivers it (``PRAGMA user_version``, or a query).

They poll the mount (default every 50 ms: each poll is one or two FUSE round
trips of a few hundred microseconds) and raise :class:`WaitTimeout`, a
:class:`TimeoutError` carrying the last reading, when the time is up. They
check at least once, so ``timeout=0`` means "check now".
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from .._events import Init, LiteFSEvent, PrimaryChange, Quiet, Tx, node_state, read_events
from .._log_fields import log_fields
from .._mount import NodeState, Position, Role, default_instance_id, read_node_state, read_position
from .connections import DATABASE_POLL_INTERVAL, reading

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "WaitTimeout",
    "is_synced",
    "read_state_from_stream",
    "wait_for_primary",
    "wait_for_schema",
    "wait_for_sync",
    "wait_for_txid",
]

logger = logging.getLogger("litefs_route")

#: Seconds between two readings of the mount while waiting.
DEFAULT_POLL_INTERVAL = 0.05

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A wait ran out of time; ``last`` is the last reading (state, position or None)."""

    def __init__(self, message: str, last: object = None) -> None:
        super().__init__(message)
        self.last = last


def _poll(
    read: Callable[[], T],
    done: Callable[[T], bool],
    timeout: float,
    interval: float,
    describe: Callable[[T], str],
    on_wait: Callable[[T], None] | None,
    deadline: float | None = None,
) -> T:
    """Read until *done* holds; at least one reading, then until *timeout* (or *deadline*) has passed."""
    if deadline is None:
        deadline = time.monotonic() + timeout
    first = True
    while True:
        value = read()
        if done(value):
            return value
        if first and on_wait is not None:
            on_wait(value)
        first = False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"timed out after {timeout:g} s; {describe(value)}", value)
        time.sleep(min(interval, remaining))


def _describe_state(state: NodeState) -> str:
    lag = "unknown" if state.lag_ms is None else f"{state.lag_ms} ms"
    return f"role {state.role.value}, primary {state.primary_id or 'unknown'}, lag {lag} ({state.detail})"


def wait_for_primary(
    litefs_dir: str | None,
    timeout: float,
    *,
    this_node: bool = False,
    instance_id: str | None = None,
    interval: float = DEFAULT_POLL_INTERVAL,
    on_wait: Callable[[NodeState], None] | None = None,
    api_url: str | None = None,
) -> NodeState:
    """Wait until a primary is known, and return that reading.

    With ``this_node=True``, wait until *this* node is the primary (or
    standalone). *on_wait* is called once, with the first reading that did not
    satisfy the wait, before the first pause: a progress message hook.
    *api_url*: LiteFS's HTTP API; where its event stream is up the wait
    follows the stream instead of polling the mount (polling otherwise).

    Raises :class:`WaitTimeout` (its ``last`` is the last :class:`NodeState`).
    """
    me = instance_id or default_instance_id()
    deadline = time.monotonic() + timeout

    def done(state: NodeState) -> bool:
        return state.is_primary if this_node else state.role is not Role.NO_PRIMARY

    if litefs_dir and api_url:
        state = _wait_on_stream(api_url, deadline, lambda event: _state_if(event, me, done))
        if state is not None:
            return state
    return _poll(lambda: read_node_state(litefs_dir, me), done, timeout, interval, _describe_state, on_wait, deadline)


def _state_if(event: LiteFSEvent | Quiet, instance_id: str, done: Callable[[NodeState], bool]) -> NodeState | None:
    if isinstance(event, Init | PrimaryChange) and done(state := node_state(event, instance_id)):
        return state
    return None


def _wait_on_stream(
    api_url: str,
    deadline: float,
    found: Callable[[LiteFSEvent | Quiet], T | None],
    catch_up: Callable[[], T | None] | None = None,
) -> T | None:
    """Wait on LiteFS's event stream until *found* returns a value; None if the stream is not usable.

    *catch_up* runs once the stream is up (after its ``init``), for what
    happened before the subscription (events are not replayed). Any failure
    of the stream (unreachable, refused, closed, the deadline) returns None:
    the caller then polls the mount for the time that is left, as before.
    """
    try:
        events = read_events(api_url, timeout=max(0.001, deadline - time.monotonic()), deadline=deadline)
        first = next(events)
        logger.info(
            "waiting on LiteFS's event stream (%s)",
            api_url,
            extra=log_fields(event="waiting_on_stream", api_url=api_url),
        )
        for value in (found(first), catch_up() if catch_up is not None else None):
            if value is not None:
                return value
        for event in events:
            if (value := found(event)) is not None:
                return value
    except OSError as exc:  # unreachable, refused, closed, or the deadline
        logger.info(
            "LiteFS's event stream (%s) is not usable (%r): polling the mount",
            api_url,
            exc,
            extra=log_fields(event="event_stream_unusable", api_url=api_url, reason=repr(exc)),
        )
    return None


def read_state_from_stream(api_url: str, instance_id: str | None = None, *, timeout: float = 2.0) -> NodeState | None:
    """The node's state as LiteFS's event stream reports it on connecting (its ``init``); None if unreachable."""
    try:
        for event in read_events(api_url, timeout=timeout):
            if isinstance(event, Init):
                return node_state(event, instance_id or default_instance_id())
    except OSError as exc:
        logger.info(
            "LiteFS's event stream (%s) is not usable (%r): reading the mount",
            api_url,
            exc,
            extra=log_fields(event="event_stream_unusable", api_url=api_url, reason=repr(exc)),
        )
    return None


def is_synced(state: NodeState, max_lag_ms: int) -> bool:
    """True if *state* is at most *max_lag_ms* behind the primary.

    The primary and a standalone node are never behind. A replica whose lag
    is unknown (no ``.lag``: LiteFS before v0.5) is not known to be synced.
    """
    if state.is_primary:
        return True
    return state.role is Role.REPLICA and state.lag_ms is not None and 0 <= state.lag_ms <= max_lag_ms


def wait_for_sync(
    litefs_dir: str | None,
    timeout: float,
    *,
    max_lag_ms: int = 1000,
    instance_id: str | None = None,
    interval: float = DEFAULT_POLL_INTERVAL,
    on_wait: Callable[[NodeState], None] | None = None,
) -> NodeState:
    """Wait until this node's replication lag is at most *max_lag_ms* (see :func:`is_synced`).

    Raises :class:`WaitTimeout` (its ``last`` is the last :class:`NodeState`).
    """
    me = instance_id or default_instance_id()
    return _poll(
        lambda: read_node_state(litefs_dir, me),
        lambda state: is_synced(state, max_lag_ms),
        timeout,
        interval,
        _describe_state,
        on_wait,
    )


def _read_position_or_none(litefs_dir: str, database: str) -> Position | None:
    # A mount that fails to read mid-wait (EIO while LiteFS restarts) is a
    # reading of "not yet", not the end of the wait.
    try:
        return read_position(litefs_dir, database)
    except OSError as exc:
        logger.debug(
            "reading %s-pos failed: %s",
            database,
            exc,
            extra=log_fields(event="position_unreadable", database=database, reason=str(exc)),
        )
        return None


def wait_for_txid(
    litefs_dir: str,
    database: str,
    txid: int,
    timeout: float,
    *,
    interval: float = DEFAULT_POLL_INTERVAL,
    on_wait: Callable[[Position | None], None] | None = None,
    api_url: str | None = None,
) -> Position:
    """Wait until *database*'s TXID in the mount is at least *txid*; return the position.

    A database that does not exist yet, or a ``-pos`` file that does not
    parse, counts as "not yet". TXIDs can go backwards after a failover that
    lost unreplicated writes: a wait for a lost TXID times out. *api_url*:
    where LiteFS's event stream is up, the wait is woken by its ``tx`` events
    instead of polling ``-pos`` (one read of ``-pos`` when the stream comes
    up, for what came before).

    Raises :class:`WaitTimeout` (its ``last`` is the last :class:`Position` or None).
    """
    deadline = time.monotonic() + timeout

    def reached(pos: Position | None) -> Position | None:
        return pos if pos is not None and pos.txid >= txid else None

    def on_stream(event: LiteFSEvent | Quiet) -> Position | None:
        if isinstance(event, Tx) and event.database == database:
            return reached(Position(event.txid, event.checksum))
        return None

    if api_url:
        position = _wait_on_stream(
            api_url, deadline, on_stream, lambda: reached(_read_position_or_none(litefs_dir, database))
        )
        if position is not None:
            return position

    def describe(pos: Position | None) -> str:
        return f"{database} is at TXID {pos.txid}" if pos is not None else f"no position for {database}"

    found = _poll(
        lambda: _read_position_or_none(litefs_dir, database),
        lambda pos: pos is not None and pos.txid >= txid,
        timeout,
        interval,
        describe,
        on_wait,
        deadline,
    )
    assert found is not None  # done() only accepts a position
    return found


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
        time.sleep(DATABASE_POLL_INTERVAL)


def _schema_now(path: str, query: str) -> int | None:
    """The schema version now; None while the database or its table is not there yet. ValueError for a bad query."""
    try:
        with reading(path) as conn:
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
