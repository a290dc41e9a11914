"""The plans: each routing rule's I/O in order, as generators a driver runs (see :mod:`litefs_route._needs`).

:func:`plan_request` routes a request before its app runs; :func:`plan_settlement`
ends one that ran here but must end on the primary. The answers themselves
come from :mod:`litefs_route._decision`; a plan only fetches what they need.
"""

from __future__ import annotations

from collections.abc import Generator

from ._decision import (
    awaits_primary,
    body_timed_out,
    decide,
    decide_lagging_read,
    health,
    needs_fresh_state,
    outstanding_txids,
    run_read,
    settle,
    settle_failure,
)
from ._mount import NodeState
from ._needs import (
    Answer,
    AwaitChange,
    MeasureBody,
    Need,
    Plan,
    ReadClock,
    ReadMount,
    ReadPositions,
    ReadState,
    WaitForTxids,
    expect_bool,
    expect_float,
    expect_optional_int,
    expect_positions,
    expect_state,
)
from ._request import RequestInfo
from ._rules import Rules
from ._sqlite_errors import WriteFailureKind
from ._verdicts import NO_PRIMARY, RUN_READ, Decision, Outcome, Pending, assert_never

__all__ = ["plan_request", "plan_settlement"]

# While a write waits for a primary, the mount is read at most this often
# (shared by every waiting request through the single-flight cache); a
# pushed state wakes it at once.
_PRIMARY_POLL = 0.05


def plan_request(request: RequestInfo, rules: Rules, *, known_txids: tuple[int | None, ...] | None = None) -> Plan:
    """Route *request*: rules 1-6, yielding each piece of I/O they need."""
    state = expect_state((yield ReadState(0 if needs_fresh_state(request, rules) else None)))
    step = decide(request, state, rules, known_txids=known_txids)
    waited_for_primary = False
    while True:
        match step:
            case Decision():
                return Outcome(step, state)
            case Pending.WAIT_FOR_PRIMARY:
                if waited_for_primary:
                    return Outcome(NO_PRIMARY, state)
                state = yield from _wait_for_primary(state, rules)
                waited_for_primary = True
                step = decide(request, state, rules, known_txids=known_txids)
            case Pending.MEASURE_BODY:
                size = expect_optional_int((yield MeasureBody(rules.replay_body_limit, rules.body_timeout)))
                if size is None:
                    return Outcome(body_timed_out(rules), state)
                step = decide(request, state, rules, body_size=size)
            case Pending.WAIT_FOR_TXID:
                assert request.txids is not None
                caught_up = expect_bool((yield WaitForTxids(request.txids, rules.consistency_wait)))
                step = RUN_READ if caught_up else decide_lagging_read(request, state, rules)
            case Pending.CHECK_TXID:
                assert request.txids is not None
                local = expect_positions((yield ReadPositions()), len(request.txids))
                read = run_read(request, state, rules)
                return Outcome(read, state, clear_txids=outstanding_txids(request.txids, local))
            case Pending.CHECK_HEALTH:
                state = expect_state((yield ReadMount()))  # .lag now: a pushed state carries none
                return Outcome(health(state, rules), state)
            case _:
                assert_never(step)


def plan_settlement(
    request: RequestInfo,
    rules: Rules,
    *,
    failure: WriteFailureKind | None = None,
    routed_as_primary: bool = False,
) -> Plan:
    """Rule 8: the answer for a request that ran here but must end on the primary.

    *failure*: how SQLite failed the request's write (None: ``ensure_primary()``
    ended it). *routed_as_primary*: the reading the request was routed on
    said this node is the primary. Never RUN (the app already ran); the
    outcome's state is the fresh reading it was decided on (for the reply's tags).
    """
    state = expect_state((yield ReadMount()))
    may_have_run = settle_failure(state, failure, routed_as_primary=routed_as_primary)
    if may_have_run is not None:
        return Outcome(may_have_run, state)
    state = yield from _wait_for_primary(state, rules, from_mount=True)
    return Outcome(settle(request, state, rules, failure), state)


def _wait_for_primary(
    state: NodeState, rules: Rules, *, from_mount: bool = False
) -> Generator[Need, Answer, NodeState]:
    """Rule 4: re-read the state (*from_mount*: the mount) until a primary is known or ``primary_wait`` has passed."""
    if not awaits_primary(state):
        return state
    deadline = expect_float((yield ReadClock())) + rules.primary_wait
    while awaits_primary(state) and expect_float((yield ReadClock())) < deadline:
        state = expect_state((yield AwaitChange(state, _PRIMARY_POLL, from_mount)))
    return state
