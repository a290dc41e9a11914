"""OpenTelemetry metrics for litefs-route (the ``otel`` extra: ``opentelemetry-api``).

::

    import litefs_route.otel
    litefs_route.otel.instrument()        # the global MeterProvider (or meter_provider=...)

The series of :mod:`litefs_route.prometheus`, through a meter named
``litefs_route``, for whatever SDK and exporter the app configures
(OTLP, Prometheus, the console): ``litefs_route.requests{outcome}``,
``litefs_route.replays{reason}``, ``litefs_route.unavailable{reason}``
(counters), ``litefs_route.role{role}``, ``litefs_route.lag`` (seconds) and
``litefs_route.event_stream.up`` (gauges observed at each collection),
``litefs_route.primary_wait.duration{outcome}``,
``litefs_route.txid_wait.duration{outcome}`` and ``litefs_route.replay.latency``
(histograms, seconds: Prometheus's ``litefs_route_*_seconds``).

And on the request's span, when one is recording (the server span of an
OpenTelemetry WSGI/ASGI instrumentation around the middleware), what
litefs-route did: ``litefs_route.outcome`` (as the ``outcome`` label),
``litefs_route.replay.reason``, ``litefs_route.replay.target`` (the instance
it was replayed to), ``litefs_route.unavailable.reason``,
``litefs_route.primary_wait.seconds`` and ``litefs_route.primary_wait.outcome``,
``litefs_route.read_your_writes.wait_seconds`` and
``litefs_route.read_your_writes.outcome`` (``arrived``, ``timed_out``), and on
a replayed request ``litefs_route.replay.latency_seconds``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from opentelemetry import metrics, trace

from . import __version__
from ._counters import add_count_listener, remove_count_listener
from ._observed import HISTOGRAMS, ROLES, count_meaning, node_gauges

__all__ = ["OtelMetrics", "instrument"]


class OtelMetrics:
    """The instruments :func:`instrument` made on one meter."""

    def __init__(self, meter: metrics.Meter) -> None:
        self._closed = False  # before the gauges: a collection may call them at once
        self.requests = meter.create_counter(
            "litefs_route.requests", unit="{request}", description="Requests routed by litefs-route, by how they ended."
        )
        self.replays = meter.create_counter(
            "litefs_route.replays", unit="{request}", description="Requests answered with fly-replay, by cause."
        )
        self.unavailable = meter.create_counter(
            "litefs_route.unavailable", unit="{request}", description="Requests answered 503 by litefs-route."
        )
        self.histograms = {
            name: meter.create_histogram(each.otel_name, unit="s", description=each.description)
            for name, each in HISTOGRAMS.items()
        }
        meter.create_observable_gauge(
            "litefs_route.role", [self._role], description="The role the middleware routes on (1: this one)."
        )
        meter.create_observable_gauge(
            "litefs_route.lag", [self._lag], unit="s", description="LiteFS's replication lag (.lag)."
        )
        meter.create_observable_gauge(
            "litefs_route.event_stream.up", [self._stream], description="1 while LiteFS's event stream is followed."
        )

    def count(self, name: str, amount: float, cause: str | None) -> None:
        """One count of a NodeRouting (a :mod:`litefs_route._counters` listener)."""
        span = trace.get_current_span()  # counted in the request's thread or task: its span, if any
        recording = span.is_recording()
        histogram = self.histograms.get(name)
        if histogram is not None:  # a duration (amount: seconds; cause: its outcome)
            histogram.record(amount, None if cause is None else {"outcome": cause})
            if recording:
                _set_duration(span, name, amount, cause)
            return
        if name == "replay_target":
            if recording and cause is not None:
                span.set_attribute("litefs_route.replay.target", cause)
            return
        meaning = count_meaning(name, cause)
        if meaning is None:
            return
        self.requests.add(amount, {"outcome": meaning.outcome})
        if recording:
            span.set_attribute("litefs_route.outcome", meaning.outcome)
        if meaning.replay_reason is not None:
            self.replays.add(amount, {"reason": meaning.replay_reason})
            if recording:
                span.set_attribute("litefs_route.replay.reason", meaning.replay_reason)
        if meaning.unavailable_reason is not None:
            self.unavailable.add(amount, {"reason": meaning.unavailable_reason})
            if recording:
                span.set_attribute("litefs_route.unavailable.reason", meaning.unavailable_reason)

    def close(self) -> None:
        """Stop counting (the meter's instruments stay, as OpenTelemetry has no way to remove them)."""
        with _lock:
            self._closed = True
            remove_count_listener(self.count)

    def _role(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        gauges = None if self._closed else node_gauges()
        if gauges is None or gauges.role is None:
            return []
        return [metrics.Observation(1 if role == gauges.role else 0, {"role": role}) for role in ROLES]

    def _lag(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        gauges = None if self._closed else node_gauges()
        if gauges is None or gauges.lag_seconds is None:
            return []
        return [metrics.Observation(gauges.lag_seconds)]

    def _stream(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        gauges = None if self._closed else node_gauges()
        return [] if gauges is None else [metrics.Observation(1 if gauges.event_stream_up else 0)]


# Each duration's span attributes: (seconds, outcome).
_SPAN_DURATIONS = {
    "primary_wait": ("litefs_route.primary_wait.seconds", "litefs_route.primary_wait.outcome"),
    "txid_wait": ("litefs_route.read_your_writes.wait_seconds", "litefs_route.read_your_writes.outcome"),
    "replay_latency": ("litefs_route.replay.latency_seconds", None),
}


def _set_duration(span: trace.Span, name: str, seconds: float, outcome: str | None) -> None:
    seconds_key, outcome_key = _SPAN_DURATIONS[name]
    span.set_attribute(seconds_key, seconds)
    if outcome_key is not None and outcome is not None:
        span.set_attribute(outcome_key, outcome)


def instrument(meter_provider: metrics.MeterProvider | None = None) -> OtelMetrics:
    """Count this process's routing through a ``litefs_route`` meter of *meter_provider* (default: the global one)."""
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _lock:
        instruments = OtelMetrics(provider.get_meter("litefs_route", __version__))
        add_count_listener(instruments.count)
    return instruments


_lock = threading.Lock()
