"""The I/O a plan asks its driver for: the one typed protocol between the rules and each adapter's I/O.

A plan yields a :data:`Need` and is sent back its :data:`Answer` (named in
brackets on each class); what a driver sends back is checked, so a driver
bug fails loudly here rather than as a wrong routing decision.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from ._mount import NodeState
from ._verdicts import Outcome

__all__ = [
    "Answer",
    "AwaitChange",
    "MeasureBody",
    "Need",
    "Plan",
    "ReadClock",
    "ReadMount",
    "ReadPositions",
    "ReadState",
    "WaitForTxids",
    "expect_bool",
    "expect_float",
    "expect_optional_int",
    "expect_positions",
    "expect_state",
]


@dataclass(frozen=True, slots=True)
class ReadState:
    """The node state, at most *max_age* seconds old; None: the cache's TTL [NodeState]."""

    max_age: float | None


@dataclass(frozen=True, slots=True)
class ReadMount:
    """The node state read from the mount now, even while LiteFS's event stream pushes it [NodeState].

    For a request SQLite refused as read-only: the strongest sign that the
    state it was routed on, pushed or cached, is wrong.
    """


@dataclass(frozen=True, slots=True)
class ReadClock:
    """The monotonic clock, in seconds [float]."""


@dataclass(frozen=True, slots=True)
class AwaitChange:
    """The node state once it may differ from *seen*, at most *timeout* seconds from now [NodeState].

    While LiteFS's event stream pushes the state, the next push answers at
    once; otherwise the state is read after *timeout* (from the cache, shared
    by every waiting request; or, with *from_mount*, from the mount itself,
    because the mount has contradicted a pushed state). Never blocks an
    event loop.
    """

    seen: NodeState
    timeout: float
    from_mount: bool = False


@dataclass(frozen=True, slots=True)
class MeasureBody:
    """The request body's size, reading at most *limit* + 1 bytes within *timeout* seconds.

    [int, or None if the body did not arrive in time]
    """

    limit: int
    timeout: float


@dataclass(frozen=True, slots=True)
class WaitForTxids:
    """Wait until each database's local TXID reaches its one in *txids* (0: none), at most *timeout* seconds in all.

    [bool: all reached]
    """

    txids: tuple[int, ...]
    timeout: float


@dataclass(frozen=True, slots=True)
class ReadPositions:
    """Each database's local TXID, read now [a tuple of int, or None where unknown]."""


Need = ReadState | ReadMount | ReadClock | AwaitChange | MeasureBody | WaitForTxids | ReadPositions
#: What a driver sends back for a :data:`Need` (checked by the plan).
Answer = NodeState | float | int | bool | tuple[int | None, ...] | None

Plan = Generator[Need, Answer, Outcome]


def expect_state(answer: Answer) -> NodeState:
    if not isinstance(answer, NodeState):
        raise TypeError(f"a driver answered ReadState with {answer!r}, not a NodeState")
    return answer


def expect_float(answer: Answer) -> float:
    if isinstance(answer, bool) or not isinstance(answer, int | float):
        raise TypeError(f"a driver answered ReadClock with {answer!r}, not a number")
    return answer


def expect_bool(answer: Answer) -> bool:
    if not isinstance(answer, bool):
        raise TypeError(f"a driver answered WaitForTxids with {answer!r}, not a bool")
    return answer


def expect_positions(answer: Answer, count: int) -> tuple[int | None, ...]:
    if not (
        isinstance(answer, tuple)
        and len(answer) == count
        and all(p is None or (isinstance(p, int) and not isinstance(p, bool)) for p in answer)
    ):
        raise TypeError(f"a driver answered ReadPositions with {answer!r}, not {count} ints or None")
    return answer


def expect_optional_int(answer: Answer) -> int | None:
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, int)):
        raise TypeError(f"a driver answered with {answer!r}, not an int or None")
    return answer
