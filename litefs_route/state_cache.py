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

Unless LiteFS tells us: while its event stream is up
(:mod:`litefs_route.subscriber`), every change is *pushed* here
(:meth:`StateCache.push`) and the reading never expires, so no request reads
the mount at all; when the stream drops, :meth:`StateCache.stream_down`
expires it and the TTL applies again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from .mount import NodeState, Role, read_node_state
from .wakeups import Wakeups

__all__ = ["StateCache"]

logger = logging.getLogger("litefs_route")

# Seconds after which an unfinished refresh claim counts as abandoned.
_CLAIM_EXPIRY = 5.0


class StateCache:
    """Thread-safe TTL cache of :func:`~litefs_route.mount.read_node_state`."""

    def __init__(
        self,
        litefs_dir: str | None,
        instance_id: str,
        ttl: float,
        *,
        reader: Callable[[str | None, str], NodeState] = read_node_state,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.litefs_dir = litefs_dir
        self.instance_id = instance_id
        self.ttl = ttl
        self._reader = reader
        self._clock = clock
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
        now = self._clock()
        with self._claim:
            # A claim older than _CLAIM_EXPIRY was abandoned (a cancelled
            # request): take it over rather than serve a stale reading forever.
            if self._claimed_at is not None and now - self._claimed_at < _CLAIM_EXPIRY:
                return state
            self._claimed_at = now
        return None

    def fresh(self, max_age: float | None = None) -> NodeState | None:
        """The reading if it is younger than *max_age* (default: the TTL), else None (claims nothing)."""
        state = self._state
        if state is not None and self._clock() - self._read_at < (self.ttl if max_age is None else max_age):
            return state
        return None

    def refresh(self) -> NodeState:
        """Read the mount now (blocking: call it off the event loop).

        Concurrent callers share reads: a caller that finds a reading which
        *began* after it called takes that one (it is as fresh as its own
        would be) instead of reading again. A cold start or a burst of
        replayed requests costs two reads, not one per request.
        """
        asked = self._clock()
        if self.before_read is not None:
            self.before_read()
        try:
            with self._lock:
                if self._state is not None and self._began_at > asked:
                    return self._state
                began = self._clock()
                state = self._reader(self.litefs_dir, self.instance_id)
                self.reads += 1
                previous, self._state = self._state, state
                self._began_at = began
                self._read_at = self._clock()
        finally:
            self._claimed_at = None
        self._log_if_changed(previous, state)
        return state

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
        began = self._clock()
        state = self._reader(self.litefs_dir, self.instance_id)
        with self._lock:
            self.reads += 1
            previous, pushed = self._state, self._read_at == math.inf
            if not pushed:
                self._state, self._began_at, self._read_at = state, began, self._clock()
        if not pushed:
            self._log_if_changed(previous, state)
        elif previous is not None and (previous.role, previous.primary_id) != (state.role, state.primary_id):
            logger.info(
                "the mount says %s (primary %s) where LiteFS's event stream said %s (primary %s)",
                state.role,
                state.primary_id or "unknown",
                previous.role,
                previous.primary_id or "unknown",
            )
        return state

    def push(self, state: NodeState) -> None:
        """A reading from LiteFS's event stream: current until the next push or :meth:`stream_down`."""
        with self._lock:  # after a read in flight, never overwritten by it
            previous, self._state = self._state, state
            # Never expires, and counts as begun after any caller's request.
            self._began_at = self._read_at = math.inf
            self._pushes += 1
        self._changes.notify()
        self._log_if_changed(previous, state)

    def stream_down(self) -> None:
        """The event stream stopped: a pushed reading expires, and the TTL applies again."""
        with self._lock:
            if self._read_at == math.inf:
                self._began_at = self._read_at = -math.inf
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
        if self._read_at != math.inf:
            return False
        self._changes.wait(self._changed_since(seen), timeout)
        return True

    async def wait_for_change_async(self, seen: NodeState | None, timeout: float) -> bool:
        """:meth:`wait_for_change` for an event loop: the loop never blocks."""
        if self._read_at != math.inf:
            return False
        await self._changes.wait_async(self._changed_since(seen), timeout)
        return True

    def _changed_since(self, seen: NodeState | None) -> Callable[[], bool]:
        pushes = self._pushes

        def changed() -> bool:
            state = self._state
            return (
                self._pushes != pushes
                or self._read_at != math.inf
                or (
                    seen is not None
                    and state is not None
                    and (state.role, state.primary_id) != (seen.role, seen.primary_id)
                )
            )

        return changed

    def forked(self) -> None:
        """In a forked child (see :meth:`EventSubscriber.forked`): fresh locks, and the reading expires."""
        self._changes.forked()
        self._lock, self._claim, self._claimed_at = threading.Lock(), threading.Lock(), None
        self._began_at = self._read_at = -math.inf

    @staticmethod
    def _log_if_changed(previous: NodeState | None, state: NodeState) -> None:
        if previous is not None and (previous.role, previous.primary_id) == (state.role, state.primary_id):
            return
        # A mount that is missing or unreadable is a deployment error, not an election.
        if state.mount_error is not None:
            level = logging.ERROR
        else:
            level = logging.WARNING if state.role is Role.NO_PRIMARY else logging.INFO
        was = "unknown" if previous is None else previous.role.value
        logger.log(
            level,
            "LiteFS role %s -> %s (primary %s; %s)",
            was,
            state.role.value,
            state.primary_id or "unknown",
            state.detail,
        )
