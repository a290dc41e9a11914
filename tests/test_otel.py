"""litefs-route's OpenTelemetry metrics and span attributes, on real servers (Werkzeug, uvicorn).

Read with the SDK's in-memory metric reader and span exporter; the server
span is opened by a shim around everything, as an instrumentation would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import litefs_route.otel
from litefs_route import asgi as asgi_adapter
from litefs_route import ensure_primary, routing_counters
from litefs_route import wsgi as wsgi_adapter
from tests.support import Mount, serve_asgi, serve_wsgi, wait_until

ME = "e784079b449483"
PRIMARY = "3d8d9e5b711e68"

Points = dict[tuple[str, tuple[tuple[str, Any], ...]], float]


def points(reader: InMemoryMetricReader) -> Points:
    found: Points = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, tuple(sorted((point.attributes or {}).items())))
                    if isinstance(point, HistogramDataPoint):  # its count; its sum under "<name>.sum"
                        found[key] = point.count
                        found[(f"{metric.name}.sum", key[1])] = point.sum
                    else:
                        assert isinstance(point, NumberDataPoint)
                        found[key] = point.value
    return found


def flask_app(options: dict[str, Any]) -> Any:
    from flask import Flask

    app = Flask("otel")
    app.post("/w")(lambda: "wrote")

    @app.get("/guarded")
    def guarded() -> str:
        ensure_primary()
        return "ran guarded"

    app.get("/read", endpoint="read")(lambda: "read")
    app.wsgi_app = wsgi_adapter.PrimaryRoutingMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


def starlette_app(options: dict[str, Any]) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def text(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def guarded(request: Request) -> Response:
        ensure_primary()
        return PlainTextResponse("ran guarded")

    return Starlette(
        routes=[Route("/w", text, methods=["POST"]), Route("/guarded", guarded), Route("/read", text)],
        middleware=[Middleware(asgi_adapter.PrimaryRoutingMiddleware, **options)],
    )


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = litefs_route.otel.instrument(provider)
    try:
        yield reader
    finally:
        instruments.close()
        provider.shutdown()


@pytest.mark.parametrize("stack", ["flask-werkzeug", "starlette-uvicorn"])
def test_otel_metrics_move(stack: str, mount: Mount, reader: InMemoryMetricReader) -> None:
    mount.make_replica(PRIMARY)  # the first reading: routable at once (.lag is fresh); the cache keeps it
    mount.set_pos("app.db", 1)
    options = {"litefs_dir": str(mount.path), "instance_id": ME, "cache_ttl": 3600, "primary_wait": 0.3}
    options |= {"litefs_api_url": "off", "database": "app.db", "consistency_wait": 0.05}
    server = serve_wsgi(flask_app(options)) if stack.startswith("flask") else serve_asgi(starlette_app(options))
    with server as url, httpx.Client(base_url=url, timeout=30) as client:
        assert [client.post("/w").status_code, client.post("/w").status_code] == [409, 409]
        assert client.get("/guarded").status_code == 409
        assert [client.get("/read").status_code for _ in range(3)] == [200] * 3
        mount.set_lag(1500)
        seen = points(reader)
        assert seen[("litefs_route.requests", (("outcome", "replayed"),))] == 3
        assert seen[("litefs_route.requests", (("outcome", "ran"),))] == 3
        assert seen[("litefs_route.replays", (("reason", "write"),))] == 2
        assert seen[("litefs_route.replays", (("reason", "ensure_primary"),))] == 1
        assert seen[("litefs_route.role", (("role", "replica"),))] == 1
        assert seen[("litefs_route.role", (("role", "primary"),))] == 0
        assert seen[("litefs_route.lag", ())] == 1.5
        assert seen[("litefs_route.event_stream.up", ())] == 0

        assert client.get("/read", headers={"Cookie": f"__txid={2:016x}"}).status_code == 409  # TXID 2 never comes
        src = {"fly-replay-src": f"instance=x;t={int(time.time() * 1_000_000) - 1000};state=litefs-route-hop-1"}
        assert client.post("/w", headers=src).status_code == 409
        seen = points(reader)
        assert seen[("litefs_route.txid_wait.duration", (("outcome", "timed_out"),))] == 1
        assert seen[("litefs_route.txid_wait.duration.sum", (("outcome", "timed_out"),))] >= 0.05
        assert seen[("litefs_route.replay.latency", ())] == 1
        assert 0 < seen[("litefs_route.replay.latency.sum", ())] < 60

        mount.make_no_primary()
        replayed = {"fly-replay-src": "instance=x;state=litefs-route-hop-1"}  # decided on a fresh reading
        assert client.post("/w", headers=replayed).status_code == 503
        seen = points(reader)
        assert seen[("litefs_route.unavailable", (("reason", "no_primary"),))] == 1
        assert seen[("litefs_route.primary_wait.duration", (("outcome", "timed_out"),))] == 1
        # The whole primary_wait, but for the instants before its first poll and after its last (< one poll, 50 ms).
        assert seen[("litefs_route.primary_wait.duration.sum", (("outcome", "timed_out"),))] >= 0.3 - 0.05


class ServerSpans:
    """Outermost shim: each request in a SERVER span of the SDK, as an instrumentation opens it."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = provider.get_tracer("tests")

    def wsgi(self, app: Any) -> Any:
        def shim(environ: Any, start_response: Any) -> Any:
            with self.tracer.start_as_current_span(environ["PATH_INFO"], kind=trace.SpanKind.SERVER):
                return list(app(environ, start_response))

        return shim

    def asgi(self, app: Any) -> Any:
        async def shim(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            with self.tracer.start_as_current_span(scope["path"], kind=trace.SpanKind.SERVER):
                await app(scope, receive, send)

        return shim

    def attributes(self, name: str) -> list[dict[str, Any]]:
        """The litefs_route attributes of each finished span called *name*, in the order they started."""
        spans = sorted(
            (span for span in self.exporter.get_finished_spans() if span.name == name),
            key=lambda span: span.start_time or 0,
        )
        return [{k: v for k, v in (span.attributes or {}).items() if k.startswith("litefs_route.")} for span in spans]


@pytest.mark.parametrize("stack", ["flask-werkzeug", "starlette-uvicorn"])
def test_the_server_span_says_what_litefs_route_did(stack: str, mount: Mount, reader: InMemoryMetricReader) -> None:
    mount.make_replica(PRIMARY)
    mount.set_pos("app.db", 1)
    options = {"litefs_dir": str(mount.path), "instance_id": ME, "cache_ttl": 3600, "litefs_api_url": "off"}
    options |= {"database": "app.db", "consistency_wait": 0.05, "primary_wait": 0.1}
    spans = ServerSpans()
    if stack.startswith("flask"):
        server = serve_wsgi(spans.wsgi(flask_app(options)))
    else:
        server = serve_asgi(spans.asgi(starlette_app(options)))
    with server as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/w").status_code == 409
        assert client.get("/guarded").status_code == 409
        assert client.get("/read").status_code == 200
        assert client.get("/read", headers={"Cookie": f"__txid={2:016x}"}).status_code == 409  # TXID 2 never comes
        src = f"instance=x;t={int(time.time() * 1_000_000) - 1000};state=litefs-route-hop-1"
        assert client.post("/w", headers={"fly-replay-src": src}).status_code == 409
        mount.make_no_primary()
        assert client.post("/w", headers={"fly-replay-src": "instance=x;state=litefs-route-hop-1"}).status_code == 503
        wait_until(lambda: len(spans.exporter.get_finished_spans()) == 6, what="the six server spans")
    write, replayed_write, unavailable = spans.attributes("/w")
    replay = {"litefs_route.outcome": "replayed", "litefs_route.replay.target": PRIMARY}
    assert write == {**replay, "litefs_route.replay.reason": "write"}
    assert spans.attributes("/guarded") == [{**replay, "litefs_route.replay.reason": "ensure_primary"}]
    ran, lagging = spans.attributes("/read")
    assert ran == {"litefs_route.outcome": "ran"}
    assert lagging.pop("litefs_route.read_your_writes.wait_seconds") >= 0.05
    assert lagging == {
        **replay,
        "litefs_route.replay.reason": "read_your_writes",
        "litefs_route.read_your_writes.outcome": "timed_out",
    }
    assert 0 < replayed_write.pop("litefs_route.replay.latency_seconds") < 60
    assert replayed_write == {**replay, "litefs_route.replay.reason": "write"}
    assert unavailable.pop("litefs_route.primary_wait.seconds") >= 0.1 - 0.05  # primary_wait, less one poll
    assert unavailable == {
        "litefs_route.outcome": "unavailable",
        "litefs_route.unavailable.reason": "no_primary",
        "litefs_route.primary_wait.outcome": "timed_out",
    }


@pytest.mark.parametrize("stack", ["flask-werkzeug", "starlette-uvicorn"])
def test_a_write_that_found_a_primary_says_how_long_it_waited(
    stack: str, mount: Mount, reader: InMemoryMetricReader
) -> None:
    """No primary known when a write arrives; one is elected while it waits: replayed to it, the wait timed."""
    mount.make_no_primary()
    options = {"litefs_dir": str(mount.path), "instance_id": ME, "cache_ttl": 0, "litefs_api_url": "off"}
    options["primary_wait"] = 60.0  # ends when the primary appears, far sooner
    spans = ServerSpans()
    app = flask_app(options) if stack.startswith("flask") else starlette_app(options)
    server = serve_wsgi(spans.wsgi(app)) if stack.startswith("flask") else serve_asgi(spans.asgi(app))
    answers: list[int] = []
    with server as url, httpx.Client(base_url=url, timeout=90) as client:
        waits_before = routing_counters().get("primary_waits", 0)  # this process's, the server's included
        write = threading.Thread(target=lambda: answers.append(client.post("/w").status_code))
        write.start()
        # Its first slice of waiting is over: elect a primary.
        wait_until(lambda: routing_counters().get("primary_waits", 0) > waits_before, what="the wait")
        mount.make_replica(PRIMARY)
        write.join(timeout=60)
        assert answers == [409]
        wait_until(lambda: len(spans.exporter.get_finished_spans()) == 1, what="the server span")
    [attributes] = spans.attributes("/w")
    assert attributes.pop("litefs_route.primary_wait.seconds") > 0
    assert attributes == {
        "litefs_route.outcome": "replayed",
        "litefs_route.replay.reason": "write",
        "litefs_route.replay.target": PRIMARY,
        "litefs_route.primary_wait.outcome": "found",
    }
    seen = points(reader)
    assert seen[("litefs_route.primary_wait.duration", (("outcome", "found"),))] == 1
