"""Running a plan: the typed protocol between the decision and an adapter's I/O.

A plan (:mod:`litefs_route.decision`) yields a :data:`~litefs_route.decision.Need`
and is sent back its answer. :func:`drive` runs one with blocking I/O (WSGI
and the tests) and :func:`drive_async` on an event loop (ASGI); each adapter
supplies only the I/O, as an object with one method per need
(:class:`BlockingIO` / :class:`AsyncIO`). Every need is handled by name, and
a need added to the protocol but not to a driver fails the type check.
"""

from __future__ import annotations

from typing import Protocol

from .decision import (
    Answer,
    AwaitChange,
    MeasureBody,
    Outcome,
    Plan,
    ReadClock,
    ReadMount,
    ReadPositions,
    ReadState,
    WaitForTxids,
    assert_never,
)
from .mount import NodeState

__all__ = ["AsyncIO", "BlockingIO", "drive", "drive_async"]


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
