"""litefs-route's OpenTelemetry metrics and span attributes, on real servers (Werkzeug, uvicorn).

Read with the SDK's in-memory metric reader and span exporter; the server
span is opened by a shim around everything, as an instrumentation would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import litefs_route.otel
from litefs_route import asgi as asgi_adapter
from litefs_route import ensure_primary
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
                    assert isinstance(point, NumberDataPoint)
                    found[(metric.name, tuple(sorted((point.attributes or {}).items())))] = point.value
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
    options = {"litefs_dir": str(mount.path), "instance_id": ME, "cache_ttl": 3600, "primary_wait": 0.3}
    options["litefs_api_url"] = "off"
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

        mount.make_no_primary()
        replayed = {"fly-replay-src": "instance=x;state=litefs-route-hop-1"}  # decided on a fresh reading
        assert client.post("/w", headers=replayed).status_code == 503
        assert points(reader)[("litefs_route.unavailable", (("reason", "no_primary"),))] == 1


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

    def attributes(self, name: str) -> dict[str, Any]:
        [span] = [span for span in self.exporter.get_finished_spans() if span.name == name]
        return {k: v for k, v in (span.attributes or {}).items() if k.startswith("litefs_route.")}


@pytest.mark.parametrize("stack", ["flask-werkzeug", "starlette-uvicorn"])
def test_the_server_span_says_what_litefs_route_did(stack: str, mount: Mount, reader: InMemoryMetricReader) -> None:
    mount.make_replica(PRIMARY)
    options = {"litefs_dir": str(mount.path), "instance_id": ME, "cache_ttl": 3600, "litefs_api_url": "off"}
    spans = ServerSpans()
    if stack.startswith("flask"):
        server = serve_wsgi(spans.wsgi(flask_app(options)))
    else:
        server = serve_asgi(spans.asgi(starlette_app(options)))
    with server as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/w").status_code == 409
        assert client.get("/guarded").status_code == 409
        assert client.get("/read").status_code == 200
        wait_until(lambda: len(spans.exporter.get_finished_spans()) == 3, what="the three server spans")
    assert spans.attributes("/w") == {"litefs_route.outcome": "replayed", "litefs_route.replay.reason": "write"}
    assert spans.attributes("/guarded") == {
        "litefs_route.outcome": "replayed",
        "litefs_route.replay.reason": "ensure_primary",
    }
    assert spans.attributes("/read") == {"litefs_route.outcome": "ran"}
