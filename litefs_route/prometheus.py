"""Prometheus metrics for litefs-route (the ``prometheus`` extra: ``pip install litefs-route[prometheus]``).

::

    import litefs_route.prometheus
    litefs_route.prometheus.register()          # into prometheus_client's default registry

Then expose the registry as your app does (``prometheus_client.make_wsgi_app()``,
``make_asgi_app()``, ``generate_latest()``); ``docs/observability.md`` shows it
for Flask, FastAPI and Django, under gunicorn's several workers
(prometheus_client's multiprocess mode) and uvicorn, and Fly's ``[metrics]``.

Counted as the middlewares of this process count (:mod:`litefs_route._counters`):

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

Histograms (prometheus_client's default buckets, 5 ms to 10 s):

``litefs_route_primary_wait_seconds{outcome}``
    A request's whole wait for a primary to be known (a write during an
    election, up to ``primary_wait``): ``found``, or ``timed_out`` (503).
``litefs_route_txid_wait_seconds{outcome}``
    A replica read's wait for its TXID (read-your-writes, up to
    ``consistency_wait``): ``arrived``, or ``timed_out`` (then replayed).
``litefs_route_replay_latency_seconds``
    On the instance a request was replayed to (the primary): from the
    replaying instance's answer (``fly-replay-src``'s ``t``) to the
    request's arrival here. Two Machines' clocks: a little below zero is
    recorded as 0, beyond a minute either way (a forged or garbled ``t``)
    dropped.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._counters import add_count_listener, remove_count_listener
from ._observed import HISTOGRAMS, ROLES, count_meaning, node_gauges

__all__ = ["PrometheusMetrics", "StateCollector", "exposition", "register"]


@dataclass(eq=False)
class PrometheusMetrics:
    """The instruments :func:`register` made, and the registry they are in."""

    registry: CollectorRegistry
    requests: Counter
    replays: Counter
    unavailable: Counter
    state: StateCollector
    #: By their name in :data:`~litefs_route._counters.TIMINGS`.
    histograms: dict[str, Histogram]
    _registered: bool = field(default=True, repr=False)
    # What each (name, cause) moves, bound on its first count: labels() costs more than the inc itself.
    _steps: dict[tuple[str, str | None], tuple[Callable[[float], None], ...]] = field(default_factory=dict, repr=False)

    def count(self, name: str, amount: float, cause: str | None) -> None:
        """One count of a NodeRouting (a :mod:`litefs_route._counters` listener)."""
        if name == "replay_target":  # a span's detail: no series per instance
            return
        steps = self._steps.get((name, cause))
        if steps is None:  # the first of its kind: bind the labelled children once (a few names, a few causes)
            steps = self._steps[(name, cause)] = self._bind(name, cause)
        for step in steps:
            step(amount)

    def _bind(self, name: str, cause: str | None) -> tuple[Callable[[float], None], ...]:
        """What a count of *name* with *cause* moves: each labelled child's ``inc``, or a histogram's ``observe``."""
        histogram = self.histograms.get(name)
        if histogram is not None:  # a duration (amount: seconds; cause: its outcome)
            return ((histogram if cause is None else histogram.labels(cause)).observe,)
        meaning = count_meaning(name, cause)
        if meaning is None:  # a detail of a request counted by its ending
            return ()
        steps = [self.requests.labels(meaning.outcome).inc]
        if meaning.replay_reason is not None:
            steps.append(self.replays.labels(meaning.replay_reason).inc)
        if meaning.unavailable_reason is not None:
            steps.append(self.unavailable.labels(meaning.unavailable_reason).inc)
        return tuple(steps)

    def unregister(self) -> None:
        """Stop counting and take the instruments out of the registry."""
        with _lock:
            if not self._registered:
                return
            self._registered = False
            remove_count_listener(self.count)
            for collector in (self.requests, self.replays, self.unavailable, self.state, *self.histograms.values()):
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
        gauges = node_gauges()
        if gauges is not None:
            if gauges.role is not None:
                for each in ROLES:
                    role.add_metric([each], 1.0 if each == gauges.role else 0.0)
            if gauges.lag_seconds is not None:
                lag.add_metric([], gauges.lag_seconds)
            stream.add_metric([], 1.0 if gauges.event_stream_up else 0.0)
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
        histograms = {
            name: Histogram(
                each.prometheus_name.removesuffix("_seconds"),
                each.description,
                ["outcome"] if each.outcomes else [],
                unit="seconds",
                registry=registry,
            )
            for name, each in HISTOGRAMS.items()
        }
        state = StateCollector()
        registry.register(state)
        metrics = PrometheusMetrics(registry, requests, replays, unavailable, state, histograms)
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


_lock = threading.Lock()
