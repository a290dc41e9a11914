"""What the metrics exporters share: what each count means, and the node's state when scraped.

Pure mapping and no metrics library: :mod:`litefs_route.prometheus` and
:mod:`litefs_route.otel` turn the same counts (:mod:`litefs_route._counters`)
into the same series, from this one table.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from ._counters import TIMINGS
from ._mount import Role, parse_lag
from ._routing import every_routing

__all__ = ["HISTOGRAMS", "ROLES", "CountMeaning", "Histogram", "NodeGauges", "count_meaning", "node_gauges"]

#: Every role, as the ``role`` label spells it.
ROLES = tuple(role.value for role in Role)

# Each count as the requests it ended: outcome.
_OUTCOMES = {
    "ran": "ran",
    "replays": "replayed",
    "read_replays": "replayed",
    "forwards": "forwarded",
    "unavailable_no_primary": "unavailable",
    "unavailable_misconfigured": "unavailable",
    "unavailable_too_many_replays": "unavailable",
    "unavailable_ran_here": "unavailable",
    "unavailable_replay_failed": "unavailable",
    "outcome_unknown": "outcome_unknown",
    "too_large": "too_large",
    "body_timeouts": "timed_out",
    "bad_requests": "bad_request",
    "forbidden_forwards": "forbidden",
    "health_checks_passed": "health_check",
    "health_checks_failed": "health_check",
}
_UNAVAILABLE = "unavailable_"


@dataclass(frozen=True, slots=True)
class CountMeaning:
    """One count, as the metrics say it: how a request ended, and why, if it was replayed or refused 503."""

    outcome: str
    replay_reason: str | None = None
    unavailable_reason: str | None = None


@functools.lru_cache(maxsize=256)  # on every count with metrics on: a few names, a few causes
def count_meaning(name: str, cause: str | None) -> CountMeaning | None:
    """What the count *name* (with its *cause*) says of a request; None: a wait, or a detail of one counted already."""
    outcome = _OUTCOMES.get(name)
    if outcome is None:
        return None
    if name == "replays":
        return CountMeaning(outcome, replay_reason=cause or "write")
    if name == "read_replays":
        return CountMeaning(outcome, replay_reason="read_your_writes")
    if name.startswith(_UNAVAILABLE):
        return CountMeaning(outcome, unavailable_reason=name[len(_UNAVAILABLE) :])
    return CountMeaning(outcome)


@dataclass(frozen=True, slots=True)
class Histogram:
    """One duration of :data:`~litefs_route._counters.TIMINGS`, as each exporter names it."""

    prometheus_name: str
    otel_name: str
    description: str
    #: The ``outcome`` label's values; () when it has none.
    outcomes: tuple[str, ...] = ()


#: Each duration the NodeRoutings time, by its name in :data:`~litefs_route._counters.TIMINGS`.
HISTOGRAMS = {
    "primary_wait": Histogram(
        "litefs_route_primary_wait_seconds",
        "litefs_route.primary_wait.duration",
        "Seconds a request waited for a primary to be known (its whole wait), by outcome.",
        ("found", "timed_out"),
    ),
    "txid_wait": Histogram(
        "litefs_route_txid_wait_seconds",
        "litefs_route.txid_wait.duration",
        "Seconds a read waited for its TXID to arrive (read-your-writes), by outcome.",
        ("arrived", "timed_out"),
    ),
    "replay_latency": Histogram(
        "litefs_route_replay_latency_seconds",
        "litefs_route.replay.latency",
        "Seconds from the replaying instance's answer (fly-replay-src t) to the replayed request's arrival here.",
    ),
}
assert set(HISTOGRAMS) == set(TIMINGS)


@dataclass(frozen=True, slots=True)
class NodeGauges:
    """The node as the newest middleware of this process sees it."""

    #: The role it routes on; None before its first reading.
    role: str | None
    #: ``.lag``, read now, in seconds; None when unreadable.
    lag_seconds: float | None
    event_stream_up: bool


def node_gauges() -> NodeGauges | None:
    """The node's state for a scrape (one small read of ``.lag``); None without a middleware in this process."""
    routings = every_routing()
    if not routings:
        return None
    routing = routings[-1]  # the newest middleware's: an app has one (or several on one mount)
    state = routing.cache.fresh(float("inf"))  # the reading it routes on, without I/O
    lag_ms = _read_lag(routing.cache.litefs_dir)
    subscriber = routing.subscriber
    return NodeGauges(
        None if state is None else state.role.value,
        None if lag_ms is None else lag_ms / 1000,
        subscriber is not None and subscriber.up,
    )


def _read_lag(litefs_dir: str | None) -> int | None:
    if not litefs_dir:
        return None
    try:
        with open(os.path.join(litefs_dir, ".lag"), "rb") as f:
            return parse_lag(f.read(64))
    except OSError:
        return None
