"""Prometheus metrics for litefs-route (the ``prometheus`` extra: ``pip install litefs-route[prometheus]``).

::

    import litefs_route.prometheus
    litefs_route.prometheus.register()          # into prometheus_client's default registry

Then expose the registry as your app does (``prometheus_client.make_wsgi_app()``,
``make_asgi_app()``, ``generate_latest()``); ``docs/observability.md`` shows it
for Flask, FastAPI and Django, under gunicorn's several workers
(prometheus_client's multiprocess mode) and uvicorn, and Fly's ``[metrics]``.

Counted as the middlewares of this process count (:mod:`litefs_route.counters`):

``litefs_route_requests_total{outcome}``
    Requests the middleware routed, by how they ended: ``ran`` (the app ran
    and its answer stood), ``replayed``, ``forwarded``, ``unavailable``
    (503), ``outcome_unknown`` (502), ``too_large`` (413), ``timed_out``
    (408), ``bad_request`` (400), ``forbidden`` (403), ``health_check``.
``litefs_route_replays_total{reason}``
    Replays, by what asked for them: ``write`` (a write on a replica),
    ``ensure_primary``, ``ensure_instance``, ``safety_net`` (SQLite refused
    a write), ``read_your_writes`` (a read whose TXID did not arrive).
``litefs_route_unavailable_total{reason}``
    503 answers: ``no_primary``, ``too_many_replays``, ``ran_here``, ``replay_failed``.

Read when scraped from this process's middleware (:class:`StateCollector`;
with several, the newest one's):

``litefs_route_role{role}``
    1 for the role the middleware routes on (``primary``, ``replica``,
    ``no-primary``, ``standalone``), 0 for the others.
``litefs_route_lag_seconds``
    LiteFS's replication lag (``.lag``, read from the mount at each scrape).
``litefs_route_event_stream_up``
    1 while LiteFS's event stream is followed, 0 while the mount is polled.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .counters import add_count_listener, remove_count_listener
from .mount import Role, parse_lag
from .router import every_router

__all__ = ["PrometheusMetrics", "StateCollector", "exposition", "register"]

# Each count (litefs_route.counters) as the requests it ended: outcome.
_OUTCOMES = {
    "ran": "ran",
    "replays": "replayed",
    "read_replays": "replayed",
    "forwards": "forwarded",
    "unavailable_no_primary": "unavailable",
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


@dataclass(eq=False)
class PrometheusMetrics:
    """The instruments :func:`register` made, and the registry they are in."""

    registry: CollectorRegistry
    requests: Counter
    replays: Counter
    unavailable: Counter
    state: StateCollector
    _registered: bool = field(default=True, repr=False)

    def count(self, name: str, amount: float, cause: str | None) -> None:
        """One count of a router (a :mod:`litefs_route.counters` listener)."""
        outcome = _OUTCOMES.get(name)
        if outcome is None:  # a wait, or a detail of a request counted by its ending
            return
        self.requests.labels(outcome).inc(amount)
        if name == "replays":
            self.replays.labels(cause or "write").inc(amount)
        elif name == "read_replays":
            self.replays.labels("read_your_writes").inc(amount)
        elif name.startswith(_UNAVAILABLE):
            self.unavailable.labels(name[len(_UNAVAILABLE) :]).inc(amount)

    def unregister(self) -> None:
        """Stop counting and take the instruments out of the registry."""
        with _lock:
            if not self._registered:
                return
            self._registered = False
            remove_count_listener(self.count)
            for collector in (self.requests, self.replays, self.unavailable, self.state):
                self.registry.unregister(collector)


class StateCollector(Collector):
    """The node's role, lag and event stream, as this process's newest middleware sees them when scraped.

    Registered by :func:`register`; in prometheus_client's multiprocess mode,
    register one in the registry you build for each scrape (the answering
    worker reads the same mount as every other).
    """

    def collect(self) -> Iterator[Metric]:
        role = GaugeMetricFamily(
            "litefs_route_role", "The role the middleware routes on (1: this one).", labels=["role"]
        )
        lag = GaugeMetricFamily("litefs_route_lag_seconds", "LiteFS's replication lag (.lag), in seconds.")
        stream = GaugeMetricFamily(
            "litefs_route_event_stream_up", "1 while LiteFS's event stream is followed, 0 while the mount is polled."
        )
        routers = every_router()
        if routers:
            router = routers[-1]  # the newest middleware's: an app has one (or several on one mount)
            litefs_dir = router.cache.litefs_dir
            state = router.cache.fresh(float("inf"))  # the reading it routes on, without I/O
            if state is not None:
                for each in Role:
                    role.add_metric([each.value], 1.0 if each is state.role else 0.0)
            lag_ms = _read_lag(litefs_dir)
            if lag_ms is not None:
                lag.add_metric([], lag_ms / 1000)
            subscriber = router.subscriber
            stream.add_metric([], 1.0 if subscriber is not None and subscriber.up else 0.0)
        yield role
        yield lag
        yield stream

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected only when scraped (never at registration: no mount read then)


def register(registry: CollectorRegistry | None = None) -> PrometheusMetrics:
    """Count this process's routing in *registry* (default: prometheus_client's ``REGISTRY``).

    Every middleware of the process, those made before as after. Under
    gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` before
    prometheus_client is imported and call this in each worker; the counts
    are then summed by ``multiprocess.MultiProcessCollector``.
    """
    registry = REGISTRY if registry is None else registry
    with _lock:
        requests = Counter(
            "litefs_route_requests",
            "Requests routed by litefs-route, by how they ended.",
            ["outcome"],
            registry=registry,
        )
        replays = Counter(
            "litefs_route_replays", "Requests answered with fly-replay, by cause.", ["reason"], registry=registry
        )
        unavailable = Counter(
            "litefs_route_unavailable",
            "Requests answered 503 by litefs-route, by reason.",
            ["reason"],
            registry=registry,
        )
        state = StateCollector()
        registry.register(state)
        metrics = PrometheusMetrics(registry, requests, replays, unavailable, state)
        add_count_listener(metrics.count)
    return metrics


def exposition() -> tuple[bytes, str]:
    """What ``/metrics`` answers: the body and its ``Content-Type``, for any framework's view.

    prometheus_client's default registry; under ``PROMETHEUS_MULTIPROC_DIR``
    (several workers), every worker's counts summed, and the node's state as
    this worker sees it.
    """
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(StateCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _read_lag(litefs_dir: str | None) -> int | None:
    if not litefs_dir:
        return None
    try:
        with open(os.path.join(litefs_dir, ".lag"), "rb") as f:
            return parse_lag(f.read(64))
    except OSError:
        return None


_lock = threading.Lock()
