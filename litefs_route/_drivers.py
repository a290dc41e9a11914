"""Running a plan: the typed protocol between the decision and an adapter's I/O.

A plan (:mod:`litefs_route._decision`) yields a :data:`~litefs_route._decision.Need`
and is sent back its answer. :func:`drive` runs one with blocking I/O (WSGI
and the tests) and :func:`drive_async` on an event loop (ASGI); each adapter
supplies only the I/O, as an object with one method per need
(:class:`BlockingIO` / :class:`AsyncIO`). Every need is handled by name, and
a need added to the protocol but not to a driver fails the type check.

Most of that I/O is the same for every adapter (the mount, the clock, the
TXIDs): :class:`MountIO` and :class:`AsyncMountIO` hold it, and an adapter
adds only ``measure_body``, which depends on how its server hands over a body.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._counters import Counters
from ._log_fields import log_fields
from ._mount import NodeState, Role
from ._needs import Answer, AwaitChange, MeasureBody, Plan, ReadClock, ReadMount, ReadPositions, ReadState, WaitForTxids
from ._routing import NodeRouting
from ._verdicts import Outcome, assert_never

__all__ = [
    "AsyncIO",
    "AsyncMountIO",
    "BlockingIO",
    "KeptBody",
    "MountIO",
    "async_backend",
    "drive",
    "drive_async",
    "measure_stream",
]

logger = logging.getLogger("litefs_route")

# Bytes read at a time when measuring a body.
_CHUNK = 65536


class BlockingIO(Protocol):
    """The I/O a plan needs, done by blocking the calling thread."""

    def read_state(self, max_age: float | None) -> NodeState: ...
    def read_mount(self) -> NodeState: ...
    def clock(self) -> float: ...
    def await_change(self, seen: NodeState, timeout: float, from_mount: bool) -> NodeState: ...
    def measure_body(self, limit: int, timeout: float) -> int | None: ...
    def wait_for_txids(self, txids: tuple[int, ...], timeout: float) -> bool: ...
    def read_positions(self) -> tuple[int | None, ...]: ...


class AsyncIO(Protocol):
    """The I/O a plan needs, done without blocking the event loop."""

    async def read_state(self, max_age: float | None) -> NodeState: ...
    async def read_mount(self) -> NodeState: ...
    def clock(self) -> float: ...
    async def await_change(self, seen: NodeState, timeout: float, from_mount: bool) -> NodeState: ...
    async def measure_body(self, limit: int, timeout: float) -> int | None: ...
    async def wait_for_txids(self, txids: tuple[int, ...], timeout: float) -> bool: ...
    async def read_positions(self) -> tuple[int | None, ...]: ...


def drive(plan: Plan, io: BlockingIO) -> Outcome:
    """Run *plan* to its outcome with blocking I/O."""
    answer: Answer = None
    while True:
        try:
            need = plan.send(answer)
        except StopIteration as end:  # the plan's own end only, never an I/O method's
            outcome: Outcome = end.value
            _time_primary_wait(io, outcome)
            return outcome
        match need:
            case ReadState(max_age):
                answer = io.read_state(max_age)
            case ReadMount():
                answer = io.read_mount()
            case ReadClock():
                answer = io.clock()
            case AwaitChange(seen, timeout, from_mount):
                answer = io.await_change(seen, timeout, from_mount)
            case MeasureBody(limit, timeout):
                answer = io.measure_body(limit, timeout)
            case WaitForTxids(txids, timeout):
                answer = io.wait_for_txids(txids, timeout)
            case ReadPositions():
                answer = io.read_positions()
            case _:
                assert_never(need)


async def drive_async(plan: Plan, io: AsyncIO) -> Outcome:
    """Run *plan* to its outcome on an event loop."""
    answer: Answer = None
    while True:
        try:
            need = plan.send(answer)
        except StopIteration as end:
            outcome: Outcome = end.value
            _time_primary_wait(io, outcome)
            return outcome
        match need:
            case ReadState(max_age):
                answer = await io.read_state(max_age)
            case ReadMount():
                answer = await io.read_mount()
            case ReadClock():
                answer = io.clock()
            case AwaitChange(seen, timeout, from_mount):
                answer = await io.await_change(seen, timeout, from_mount)
            case MeasureBody(limit, timeout):
                answer = await io.measure_body(limit, timeout)
            case WaitForTxids(txids, timeout):
                answer = await io.wait_for_txids(txids, timeout)
            case ReadPositions():
                answer = await io.read_positions()
            case _:
                assert_never(need)


# -- the I/O every adapter shares: the mount, the clock, the TXIDs ------------------
# An adapter gives only how its server hands over a body: a function that
# measures it (a :data:`BodyMeter` or an :data:`AsyncBodyMeter`).

#: ``meter(limit, timeout, keep)``: the body's size, reading at most *limit* + 1
#: bytes within *timeout* seconds (None: it did not arrive in time); what it reads
#: goes to *keep* when that is not None.
BodyMeter = Callable[[int, float, "KeptBody | None"], "int | None"]
AsyncBodyMeter = Callable[[int, float, "KeptBody | None"], Awaitable["int | None"]]


class _PlanIO:
    """What the blocking and the asynchronous I/O of one plan share.

    One per plan driven: it counts that plan's waits in the routing's counters,
    and keeps what measuring a body read when forward mode will send it on.
    """

    __slots__ = ("kept", "primary_wait", "routing")

    def __init__(self, routing: NodeRouting) -> None:
        self.routing: NodeRouting = routing
        #: When this plan's wait for a primary began, and when its last reading after a slice came; None: no wait.
        self.primary_wait: tuple[float, float] | None = None
        #: What measuring the body read (forward mode): sent first if the request is forwarded.
        self.kept = KeptBody()

    def keeper(self) -> KeptBody | None:
        """Where ``measure_body`` keeps what it reads: :attr:`kept` in forward mode "oversize", else nowhere."""
        return self.kept if self.routing.rules.forward == "oversize" else None


class MountIO(_PlanIO):
    """:class:`BlockingIO`, inline in the request's thread (a WSGI server gives each request one)."""

    __slots__ = ("_measure",)

    def __init__(self, routing: NodeRouting, measure: BodyMeter) -> None:
        super().__init__(routing)
        self._measure = measure

    def measure_body(self, limit: int, timeout: float) -> int | None:
        return self._measure(limit, timeout, self.keeper())

    def read_state(self, max_age: float | None) -> NodeState:
        return self.routing.cache.get(max_age)

    def read_mount(self) -> NodeState:
        return self.routing.cache.read_mount()

    def clock(self) -> float:
        return time.monotonic()

    def await_change(self, seen: NodeState, timeout: float, from_mount: bool) -> NodeState:
        began, cache = time.monotonic(), self.routing.cache
        if not cache.wait_for_change(None if from_mount else seen, timeout):  # not pushed: poll
            time.sleep(timeout)
        _count_primary_wait(self, began)
        state = cache.read_mount() if from_mount else cache.get(timeout)
        _waited_until_now(self, began)
        return state

    def wait_for_txids(self, txids: tuple[int, ...], timeout: float) -> bool:
        positions = self.routing.positions
        assert positions is not None  # the plan waits only when read-your-writes is on
        counters, began = self.routing.counters, time.monotonic()
        counters.add("consistency_waits")
        arrived = positions.wait(txids, timeout)
        _timed(counters, "txid_wait", time.monotonic() - began, "arrived" if arrived else "timed_out")
        return arrived

    def read_positions(self) -> tuple[int | None, ...]:
        positions = self.routing.positions
        assert positions is not None
        return positions.read()


class AsyncMountIO(_PlanIO):
    """:class:`AsyncIO`: mount reads in a worker thread, never on the loop."""

    __slots__ = ("_measure",)

    def __init__(self, routing: NodeRouting, measure: AsyncBodyMeter) -> None:
        super().__init__(routing)
        self._measure = measure

    async def measure_body(self, limit: int, timeout: float) -> int | None:
        return await self._measure(limit, timeout, self.keeper())

    async def read_state(self, max_age: float | None) -> NodeState:
        cache = self.routing.cache
        cached = cache.cached(max_age)
        if cached is not None:
            return cached
        run_in_thread, _ = async_backend()
        state: NodeState = await run_in_thread(cache.refresh)
        return state

    async def read_mount(self) -> NodeState:
        run_in_thread, _ = async_backend()
        state: NodeState = await run_in_thread(self.routing.cache.read_mount)
        return state

    def clock(self) -> float:
        return time.monotonic()

    async def await_change(self, seen: NodeState, timeout: float, from_mount: bool) -> NodeState:
        began = time.monotonic()
        if not await self.routing.cache.wait_for_change_async(None if from_mount else seen, timeout):  # not pushed
            _, sleep = async_backend()
            await sleep(timeout)
        _count_primary_wait(self, began)
        state = await (self.read_mount() if from_mount else self.read_state(timeout))
        _waited_until_now(self, began)
        return state

    async def wait_for_txids(self, txids: tuple[int, ...], timeout: float) -> bool:
        positions = self.routing.positions
        assert positions is not None  # the plan waits only when read-your-writes is on
        counters, began = self.routing.counters, time.monotonic()
        counters.add("consistency_waits")
        arrived = await positions.wait_async(txids, timeout)
        _timed(counters, "txid_wait", time.monotonic() - began, "arrived" if arrived else "timed_out")
        return arrived

    async def read_positions(self) -> tuple[int | None, ...]:
        positions = self.routing.positions
        assert positions is not None
        run_in_thread, _ = async_backend()
        txids: tuple[int | None, ...] = await run_in_thread(positions.read)
        return txids


def _count_primary_wait(io: _PlanIO, began: float) -> None:
    """One slice of a wait for a primary is over: a plan's first counts the wait, each its seconds."""
    counters, seconds = io.routing.counters, time.monotonic() - began
    if io.primary_wait is None:
        counters.add("primary_waits")
    counters.add("primary_wait_seconds", seconds)


def _waited_until_now(io: _PlanIO, began: float) -> None:
    """A slice of a wait for a primary, and the reading after it, are over: the whole wait so far, reads included."""
    io.primary_wait = (began if io.primary_wait is None else io.primary_wait[0], time.monotonic())


def _time_primary_wait(io: BlockingIO | AsyncIO, outcome: Outcome) -> None:
    """A plan that waited for a primary is over: its whole wait, for the histograms (a test's I/O has none)."""
    if isinstance(io, _PlanIO) and io.primary_wait is not None:
        began, ended = io.primary_wait
        found = outcome.state.role is not Role.NO_PRIMARY
        _timed(io.routing.counters, "primary_wait", ended - began, "found" if found else "timed_out")


def _timed(counters: Counters, name: str, seconds: float, outcome: str) -> None:
    """A wait is over: tell the metrics, and say it at DEBUG (a wait is routine, even one that timed out)."""
    counters.time(name, seconds, outcome)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "%s of %.3f s: %s",
            name,
            seconds,
            outcome,
            extra=log_fields(event=name, waited_seconds=seconds, outcome=outcome),
        )


@dataclass(slots=True)
class KeptBody:
    """The part of a body read while measuring it, kept in forward mode (at most replay_body_limit + 1 bytes)."""

    chunks: list[bytes] = field(default_factory=list)
    #: The body ended within it: nothing is left to read.
    ended: bool = False


def measure_stream(
    read: Callable[[int], bytes], limit: int, timeout: float, keep: KeptBody | None = None
) -> int | None:
    """A blocking body's size, read through *read* (at most *limit* + 1 bytes), or None after *timeout* seconds.

    The time is checked between reads: a read that stalls ends when the
    server's own read timeout ends it. *keep*: where the bytes read go (forward
    mode sends them on), else they are dropped.
    """
    deadline = time.monotonic() + timeout
    size = 0
    while size <= limit:
        chunk = read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            if keep is not None:
                keep.ended = True
            break
        size += len(chunk)
        if keep is not None:
            keep.chunks.append(chunk)
        if time.monotonic() > deadline:
            return None
    return size


@functools.cache
def async_backend() -> tuple[Callable[[Callable[[], Any]], Awaitable[Any]], Callable[[float], Awaitable[None]]]:
    """(run_in_thread, sleep) for the running loop: anyio's when installed,
    so trio-hosted apps work too; asyncio's otherwise."""
    try:
        import anyio
        import anyio.to_thread

        return anyio.to_thread.run_sync, anyio.sleep
    except ImportError:
        import asyncio

        return asyncio.to_thread, asyncio.sleep
