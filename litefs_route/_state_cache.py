"""The node's LiteFS state, kept in memory with a bounded staleness.

Reading the mount costs a FUSE round trip per file (100-350 µs), more than a
whole hello-world request, so the middleware reads it at most once per
``cache_ttl`` per process and serves every other request from memory.

The cache is single-flight: when the reading expires, one caller refreshes it
and concurrent callers keep using the previous reading (at most one refresh
late) instead of piling more reads onto the mount. Callers that need the
truth *now* (a replayed request, a write waiting for a primary) ask for a
smaller ``max_age``; ``max_age=0`` always reads.

Stat-based invalidation is not possible: LiteFS sets no mtime on these files
and a primary switch between two Machine IDs keeps the size, so a TTL it is.

A primary is a replay target only once it is *established*. While a dead
primary's lease runs out, a replica's LiteFS names it again about once a
second for 0.1-1.6 ms: ``monitorLeaseAsReplica`` (LiteFS ``store.go``) sets
the primary before it connects, and clears it when the connection fails. A
write replayed there comes back from Fly's edge as a failed replay. So a
name counts once it has been seen without a break for
``ESTABLISHED_AFTER`` seconds (by pushes, which report every change, or by
readings at most ``_UNBROKEN_GAP`` apart); until then the reading is
handed out as "no primary known" and writes wait for it as in an election.
The first reading a process takes counts at once if ``.lag`` shows LiteFS
heard from the primary within ``_HEARD_WITHIN_MS`` (a flicker's ``.lag`` is
at least LiteFS's reconnect delay, one second by default), or if it is the
event stream's (checked against the mount when the stream connected), so a
replica that starts does not hold its first writes back.

Unless LiteFS tells us: while its event stream is up
(:mod:`litefs_route._subscriber`), every change is *pushed* here
(:meth:`StateCache.push`) and the reading never expires, so no request reads
the mount at all; when the stream drops, :meth:`StateCache.stream_down`
expires it and the TTL applies again.

Logging: each change of the state *routing* goes by (what :meth:`_vetted`
hands out) is logged once per mount and process (WARNING when no primary is
known, ERROR when the mount is missing or unreadable, INFO otherwise). A
primary not yet established is no change: the flicker above, which the
event stream pushes as it happens, would otherwise log "replica ->
no-primary" at each reconnect attempt. Every reading that differs from the
one before is logged at DEBUG.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable

from ._log_fields import log_fields
from ._mount import NodeState, Role, read_node_state
from ._wakeups import Wakeups

__all__ = ["ESTABLISHED_AFTER", "PUSHED", "StateCache"]

logger = logging.getLogger("litefs_route")

# Seconds after which an unfinished refresh claim counts as abandoned.
_CLAIM_EXPIRY = 5.0
#: Seconds a primary must be named without a break before writes are replayed to it.
ESTABLISHED_AFTER = 0.1
#: When a pushed reading (LiteFS's event stream's) was read, and until when it is fresh: it
#: never expires, and counts as begun after any caller's request.
PUSHED = math.inf
# Two readings naming the same primary further apart than this (seconds) do not
# show it was named in between: a flicker recurs about once a second.
_UNBROKEN_GAP = 0.5
# A first reading whose .lag is below this (ms) shows a live stream from the primary.
_HEARD_WITHIN_MS = 750

# The (role, primary) last logged per (mount, instance): several middlewares of
# one process (each its own cache) log a change once between them.
_logged: dict[tuple[str | None, str], tuple[Role, str | None]] = {}
_logged_lock = threading.Lock()


@dataclasses.dataclass(slots=True)
class _Naming:
    """The primary this node's LiteFS names, and since when without a break."""

    primary: str
    since: float
    last_seen: float
    established: bool


class StateCache:
    """Thread-safe TTL cache of :func:`~litefs_route._mount.read_node_state`."""

    def __init__(
        self,
        litefs_dir: str | None,
        instance_id: str,
        ttl: float,
        *,
        reader: Callable[[str | None, str], NodeState] = read_node_state,
        clock: Callable[[], float] = time.monotonic,
        flickers: bool = True,
    ) -> None:
        self.litefs_dir = litefs_dir
        self.instance_id = instance_id
        self.ttl = ttl
        self._reader = reader
        #: The clock readings are taken on (monotonic seconds).
        self.clock = clock
        # LiteFS's naming of a primary flickers (see above): a named primary counts once established.
        # A source whose naming does not (Postgres's regions, a fixed instance) is taken at its word.
        self._flickers = flickers
        self._lock = threading.Lock()
        self._claim = threading.Lock()
        self._claimed_at: float | None = None
        self._state: NodeState | None = None
        self._read_at = float("-inf")
        self._began_at = float("-inf")
        #: How many times the mount was read; the benchmarks report it.
        self.reads = 0
        # Wakes requests waiting for the reading to change (a write waiting for a primary).
        self._changes = Wakeups()
        self._pushes = 0
        #: Called before each read of the mount (the slow path): the event
        #: subscriber (re)starts its thread there, in the process that serves.
        self.before_read: Callable[[], None] | None = None
        self._naming: _Naming | None = None
        #: The stored reading once vetted as routable, and the clock reading until which it is
        #: fresh: the hot path tests both without a call (:meth:`NodeRouting.route`).
        self.routable: NodeState | None = None
        self.routable_until = -math.inf
        # (a reading naming a primary not yet established, what is handed out instead)
        self._withheld: tuple[NodeState, NodeState] | None = None

    def cached(self, max_age: float | None = None) -> NodeState | None:
        """The reading if it is at most *max_age* (default: the TTL) old.

        If it is older, the first caller gets None and has thereby claimed the
        refresh: it must call :meth:`refresh` (in ASGI, after a thread hop).
        Until that refresh lands, every other caller gets the previous
        reading instead of piling more reads onto the mount. ``max_age=0``
        always returns None (the caller reads for itself).
        """
        state = self.fresh(max_age)
        if state is not None:
            return state
        state = self._state
        if state is None or max_age == 0:
            return None
        now = self.clock()
        with self._claim:
            # A claim older than _CLAIM_EXPIRY was abandoned (a cancelled
            # request): take it over rather than serve a stale reading forever.
            if self._claimed_at is not None and now - self._claimed_at < _CLAIM_EXPIRY:
                return self._vetted(state)
            self._claimed_at = now
        return None

    def fresh(self, max_age: float | None = None) -> NodeState | None:
        """The reading if it is younger than *max_age* (default: the TTL), else None (claims nothing)."""
        state = self._state
        if state is not None and self.clock() - self._read_at < (self.ttl if max_age is None else max_age):
            return state if state is self.routable else self._vetted(state)
        return None

    def refresh(self) -> NodeState:
        """Read the mount now (blocking: call it off the event loop).

        Concurrent callers share reads: a caller that finds a reading which
        *began* after it called takes that one (it is as fresh as its own
        would be) instead of reading again. A cold start or a burst of
        replayed requests costs two reads, not one per request.
        """
        asked = self.clock()
        if self.before_read is not None:
            self.before_read()
        try:
            with self._lock:
                if self._state is not None and self._began_at > asked:
                    return self._vetted(self._state)
                began = self.clock()
                state = self._reader(self.litefs_dir, self.instance_id)
                self.reads += 1
                previous, self._state = self._state, state
                self._began_at = began
                self._read_at = self.clock()
                self._observe(state, previous, pushed=False)
        finally:
            self._claimed_at = None
        self._log_if_changed(previous, state)
        return self._vetted(state)

    def read_mount(self) -> NodeState:
        """The mount's reading now (blocking), even while readings are pushed.

        Never a pushed reading, even one that lands meanwhile (:meth:`refresh`
        would take that: it is fresh enough to route on, but it carries no
        ``.lag`` and it is what a safety-net read must check). Without pushes
        the reading also becomes the cache's; a pushed reading stays (the
        stream's next event replaces it), and a disagreement is logged.
        """
        if self.before_read is not None:
            self.before_read()
        began = self.clock()
        state = self._reader(self.litefs_dir, self.instance_id)
        with self._lock:
            self.reads += 1
            previous, pushed = self._state, self._read_at == PUSHED
            if not pushed:
                self._state, self._began_at, self._read_at = state, began, self.clock()
            # Tracked even while pushes lead: a settlement polls the mount until it names an established primary.
            self._observe(state, previous, pushed=False)
        if not pushed:
            self._log_if_changed(previous, state)
        elif previous is not None and (previous.role, previous.primary_id) != (state.role, state.primary_id):
            logger.info(
                "the mount says %s (primary %s) where LiteFS's event stream said %s (primary %s)",
                state.role,
                state.primary_id or "unknown",
                previous.role,
                previous.primary_id or "unknown",
                extra=log_fields(
                    event="mount_disagrees", role=state.role.value, primary=state.primary_id, reason=state.detail
                ),
            )
        return self._vetted(state)

    def push(self, state: NodeState) -> None:
        """A reading from LiteFS's event stream: current until the next push or :meth:`stream_down`."""
        with self._lock:  # after a read in flight, never overwritten by it
            previous, self._state = self._state, state
            self._began_at = self._read_at = PUSHED
            self._pushes += 1
            self._observe(state, previous, pushed=True)
        self._changes.notify()
        self._log_if_changed(previous, state)
        self._vetted(state)  # logs the change now, if routing takes it (no request may come for a while)

    def stream_down(self) -> None:
        """The event stream stopped: a pushed reading expires, and the TTL applies again."""
        with self._lock:
            if self._read_at == PUSHED:
                self._began_at = self._read_at = self.routable_until = -math.inf
        self._changes.notify()  # waiters go back to polling

    def get(self, max_age: float | None = None) -> NodeState:
        """The cached reading, refreshed inline if too old (WSGI, CLI)."""
        return self.cached(max_age) or self.refresh()

    @property
    def waiting(self) -> int:
        """How many requests wait for the reading to change right now."""
        return len(self._changes)

    def wait_for_change(self, seen: NodeState | None, timeout: float) -> bool:
        """While readings are pushed: wait for the next push, at most *timeout* (blocking).

        Returns at once if the pushed reading already differs from *seen* in
        role or primary (a push that came before the wait), and when the
        stream drops. Returns False at once when readings are not pushed: the
        caller polls.
        """
        if self._read_at != PUSHED:
            return False
        self._changes.wait(self._changed_since(seen), timeout)
        return True

    async def wait_for_change_async(self, seen: NodeState | None, timeout: float) -> bool:
        """:meth:`wait_for_change` for an event loop: the loop never blocks."""
        if self._read_at != PUSHED:
            return False
        await self._changes.wait_async(self._changed_since(seen), timeout)
        return True

    def _changed_since(self, seen: NodeState | None) -> Callable[[], bool]:
        pushes = self._pushes

        def changed() -> bool:
            state = self._state
            if self._pushes != pushes or self._read_at != PUSHED:
                return True
            if seen is None or state is None:
                return False
            # As handed out: a primary named but not yet established has not changed "no primary".
            state = self._vetted(state)
            return (state.role, state.primary_id) != (seen.role, seen.primary_id)

        return changed

    def _observe(self, state: NodeState, previous: NodeState | None, *, pushed: bool) -> None:
        """Track how long *state*'s primary has been named without a break (under ``self._lock``)."""
        now = self.clock()
        primary = state.primary_id if state.role is Role.REPLICA else None
        naming = self._naming
        if primary is None:
            self._naming = None
        elif naming is None or naming.primary != primary:
            # A process's first reading: the mount's counts if .lag shows a live stream from the
            # primary; a push's, which the subscriber checked against the mount when it connected, counts.
            heard = pushed or (state.lag_ms is not None and 0 <= state.lag_ms < _HEARD_WITHIN_MS)
            self._naming = _Naming(primary, now, now, established=previous is None and heard)
        else:
            # Pushes report every change, so consecutive ones are unbroken; readings only sample.
            if not naming.established and not pushed and now - naming.last_seen > _UNBROKEN_GAP:
                naming.since = now
            naming.last_seen = now
        self.routable, self.routable_until = None, -math.inf

    def _vetted(self, state: NodeState) -> NodeState:
        """*state* as routing may use it: a primary not yet established reads as "no primary known"."""
        if state.role is not Role.REPLICA or not self._flickers:
            self._mark_routable(state)
            return state
        naming = self._naming
        # (A reading of another primary than the tracked one, the mount read while pushes lead, is not vouched for.)
        if naming is not None and naming.primary == state.primary_id:
            if not naming.established and self.clock() - naming.since >= ESTABLISHED_AFTER:
                naming.established = True
            if naming.established:
                self._mark_routable(state)
                return state
        withheld = self._withheld
        if withheld is not None and withheld[0] is state:
            return withheld[1]
        detail = f"LiteFS names {state.primary_id} as primary, not yet for {ESTABLISHED_AFTER:g} s without a break"
        unestablished = dataclasses.replace(state, role=Role.NO_PRIMARY, primary_id=None, detail=detail)
        self._withheld = (state, unestablished)
        return unestablished

    def _mark_routable(self, state: NodeState) -> None:
        if state is self._state and state is not self.routable:
            self.routable, self.routable_until = state, self._read_at + self.ttl
            # Once per reading that routing takes (an established primary, or no replica at all).
            self._log_routed(state)

    def _log_routed(self, state: NodeState) -> None:
        """Log *state*, now routed on, if it differs from the last state logged for this mount in this process."""
        key = (self.litefs_dir, self.instance_id)
        with _logged_lock:
            was = _logged.get(key)
            if was == (state.role, state.primary_id):
                return
            _logged[key] = (state.role, state.primary_id)
        # A mount that is missing or unreadable is a deployment error, not an election.
        if state.mount_error is not None:
            level = logging.ERROR
        else:
            level = logging.WARNING if state.role is Role.NO_PRIMARY else logging.INFO
        logger.log(
            level,
            "%s %s -> %s (primary %s; %s)",
            "LiteFS role" if self._flickers else "role",  # another source's (Postgres's) is not LiteFS's
            "unknown" if was is None else was[0].value,
            state.role.value,
            state.primary_id or "unknown",
            state.detail,
            extra=log_fields(
                event="role_changed",
                role=state.role.value,
                previous_role=None if was is None else was[0].value,
                primary=state.primary_id,
                reason=state.detail,
            ),
        )

    def forked(self) -> None:
        """In a forked child (see :meth:`EventSubscriber.forked`): fresh locks, and the reading expires."""
        global _logged_lock
        self._changes.forked()
        self._lock, self._claim, self._claimed_at = threading.Lock(), threading.Lock(), None
        _logged_lock = threading.Lock()  # a thread of the parent may have held it at the fork
        self._began_at = self._read_at = self.routable_until = -math.inf

    @staticmethod
    def _log_if_changed(previous: NodeState | None, state: NodeState) -> None:
        # Each reading that differs, flickers included: the routed state is logged by _log_routed.
        if previous is not None and (previous.role, previous.primary_id) == (state.role, state.primary_id):
            return
        logger.debug(
            "LiteFS's files say %s (primary %s; %s)",
            state.role,
            state.primary_id or "unknown",
            state.detail,
            extra=log_fields(event="mount_read", role=state.role.value, primary=state.primary_id, reason=state.detail),
        )
