"""The answers of the rules: final ones (:class:`Decision`), pending ones, and what each is counted as.

Reasons are words a user reads in a 503's body; :func:`counter_name` maps
each answer that does not run the app onto its :mod:`~litefs_route._counters` name.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

from ._mount import NodeState
from ._request import REPLAY_HEADER_LIMIT

__all__ = [
    "BAD_FRAMING",
    "DISAGREE_REASON",
    "FORBIDDEN",
    "FORWARD_LOOP_REASON",
    "HEALTHY",
    "LAGGING_REASON",
    "MAY_HAVE_RUN_REASON",
    "MISCONFIGURED_REASON",
    "NO_PRIMARY",
    "NO_PRIMARY_REASON",
    "RAN_HERE_REASON",
    "REFUSED_HERE_REASON",
    "RUN_PASSTHROUGH",
    "RUN_PASSTHROUGH_WRITE",
    "RUN_READ",
    "RUN_WRITE",
    "Decision",
    "Kind",
    "Outcome",
    "Pending",
    "assert_never",
    "counter_name",
    "replay_failure",
]

NO_PRIMARY_REASON = "no primary is known right now (a LiteFS election or failover)"
# After the mount's own words ("the LiteFS directory /x does not exist"): no election to wait out.
MISCONFIGURED_REASON = "{}: litefs-route is misconfigured"
DISAGREE_REASON = "replayed {} times without reaching the primary (the instances disagree on the primary)"
RAN_HERE_REASON = "this instance was not the primary when the request ran"
# The database refused the write on a node that is the primary after all (SQLITE_BUSY: lock contention, or LiteFS
# restarting; Postgres 25006: a read-only transaction, or the primary region's server demoted).
REFUSED_HERE_REASON = "the database refused its write on this instance and none of it ran"
MAY_HAVE_RUN_REASON = (
    "its write failed on instance {} while LiteFS was stopping or had stopped there, "
    "and LiteFS may have committed it first"
)
LAGGING_REASON = "its TXID did not arrive in time"
FORWARD_LOOP_REASON = "it was forwarded here {} times and this instance is not the primary either"
# Fly's proxy could not deliver our replay and sent the request back (fly-replay-failed).
_REPLAY_FAILED_REASON = "the replay to {} failed ({}), and a request sent back may not be replayed again"
_REPLAY_FAILED_FIELD = re.compile(r"(?:^|;)\s*(instance|reason)=([A-Za-z0-9_.-]{1,64})\s*(?=;|$)")


class Kind(enum.Enum):
    """A final answer."""

    RUN = "run"  # call the app here
    REPLAY = "replay"  # answer with fly-replay: instance=<target> (region=<target> if by_region)
    UNAVAILABLE = "unavailable"  # 503 + Retry-After
    TOO_LARGE = "too-large"  # 413: Fly cannot replay this body
    TIMEOUT = "timeout"  # 408: a body of unknown length did not arrive in time to be measured
    HEALTHY = "healthy"  # 200: the health check passes
    UNHEALTHY = "unhealthy"  # 503: the health check fails (replication lag)
    FORWARD = "forward"  # send the request to <target> ourselves and relay its answer (forward mode)
    FORBIDDEN = "forbidden"  # 403: claims to be forwarded by litefs-route, without this cluster's secret
    OUTCOME_UNKNOWN = "outcome-unknown"  # 502: a write that failed here may have run; never replayed
    BAD_REQUEST = "bad-request"  # 400: both Content-Length and Transfer-Encoding (RFC 9112 6.3)


# A NamedTuple: immutable (one instance may serve every request), and built,
# hashed and compared in C (a frozen dataclass costs ~7,000 instructions more
# per replayed request, measured with callgrind).
class Decision(NamedTuple):
    """A final answer: run the app here, or the response that replaces it."""

    kind: Kind
    #: True if the request was routed as a write (it mutates the database).
    write: bool
    #: The replay target (REPLAY, TOO_LARGE; UNAVAILABLE: the replay Fly's proxy could not deliver).
    target: str | None = None
    #: The replay's hop number, carried in fly-replay's `state` (REPLAY only).
    hops: int = 0
    #: Why, in words a user may read (UNAVAILABLE, TOO_LARGE, TIMEOUT; a read's REPLAY).
    reason: str = ""
    #: The path is a passthrough path (RUN only): never gets a TXID cookie.
    passthrough: bool = False
    #: The target is a region, not an instance (REPLAY, TOO_LARGE): ``fly-replay: region=``.
    by_region: bool = False


# Immutable, so one instance serves every request that ends in it.
RUN_READ = Decision(Kind.RUN, write=False)
RUN_WRITE = Decision(Kind.RUN, write=True)
RUN_PASSTHROUGH = Decision(Kind.RUN, write=False, passthrough=True)
RUN_PASSTHROUGH_WRITE = Decision(Kind.RUN, write=True, passthrough=True)
#: The answer to a write when no primary is known, after the wait (rule 4).
NO_PRIMARY = Decision(Kind.UNAVAILABLE, write=True, reason=NO_PRIMARY_REASON)
# Rule 0: refused before anything runs, whatever the method and the node.
BAD_FRAMING = Decision(
    Kind.BAD_REQUEST, write=False, reason="it has both Content-Length and Transfer-Encoding (RFC 9112 6.3)"
)


class Pending(enum.Enum):
    """Not an answer yet: what :func:`decide` needs to know first (the plans fetch it)."""

    WAIT_FOR_PRIMARY = "wait-for-primary"  # no primary known: wait for one, decide again
    MEASURE_BODY = "measure-body"  # a replay whose body size is unknown: measure, decide again
    WAIT_FOR_TXID = "wait-for-txid"  # a replica read behind its TXID cookie: wait for it
    CHECK_TXID = "check-txid"  # a primary read with a TXID cookie: is the cookie ahead of us?
    CHECK_HEALTH = "check-health"  # the health check: read .lag now


# Built on every request: a plain slotted class, as RequestInfo (cheaper to
# build than a NamedTuple, whose __new__ is Python code).
@dataclass(slots=True)
class Outcome:
    """Where a plan ends: the decision, and the reading it was made on."""

    decision: Decision
    state: NodeState
    #: The databases (indexes) whose TXID cookie is ahead of this primary: clear those cookies.
    clear_txids: tuple[int, ...] = ()


FORBIDDEN = Decision(Kind.FORBIDDEN, write=True, reason="it claims to be forwarded but lacks this cluster's secret")

HEALTHY = Decision(Kind.HEALTHY, write=False)


def replay_failure(replay_failed: str, region: str | None = None) -> str:
    """Why a request came back: a ``fly-replay-failed`` header in words (the reason of its 503).

    *region*: the replay named that region (``fly-replay: region=``), not an
    instance: the header's ``instance`` is then empty when none could be found.
    """
    fields = dict(_REPLAY_FAILED_FIELD.findall(replay_failed[:REPLAY_HEADER_LIMIT]))
    target = f"region {region}" if region is not None else f"instance {fields.get('instance', '?')}"
    return _REPLAY_FAILED_REASON.format(target, fields.get("reason", "unknown reason"))


def counter_name(decision: Decision) -> str:
    """The :mod:`~litefs_route._counters` name of a decision that does not run the app."""
    match decision.kind:
        case Kind.REPLAY:
            return "read_replays" if decision.reason == LAGGING_REASON else "replays"
        case Kind.UNAVAILABLE:
            if decision.reason == NO_PRIMARY_REASON:
                return "unavailable_no_primary"
            if decision.reason.endswith(MISCONFIGURED_REASON.format("")):
                return "unavailable_misconfigured"
            if decision.target is not None:  # only a refused replay names its target
                return "unavailable_replay_failed"
            if decision.reason in (RAN_HERE_REASON, REFUSED_HERE_REASON):
                return "unavailable_ran_here"
            return "unavailable_too_many_replays"
        case Kind.TOO_LARGE:
            return "too_large"
        case Kind.FORWARD:
            return "forwards"
        case Kind.FORBIDDEN:
            return "forbidden_forwards"
        case Kind.OUTCOME_UNKNOWN:
            return "outcome_unknown"
        case Kind.BAD_REQUEST:
            return "bad_requests"
        case Kind.TIMEOUT:
            return "body_timeouts"
        case Kind.HEALTHY | Kind.UNHEALTHY:
            return "health_checks_passed" if decision.kind is Kind.HEALTHY else "health_checks_failed"
        case Kind.RUN:
            raise ValueError("a decision that runs the app is not counted")
        case _:
            assert_never(decision.kind)


def assert_never(value: NoReturn) -> NoReturn:
    """Unreachable: mypy checks that every case is handled (``typing.assert_never`` is 3.11+)."""
    raise AssertionError(f"unhandled: {value!r}")
