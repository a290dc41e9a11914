"""litefs-route's Prometheus metrics move on real servers: Werkzeug, uvicorn, gunicorn with two workers, Django.

Each server routes the same requests on a replica (a replayed write, an
``ensure_primary()`` replay, reads that ran), then a write with no primary
known (a 503); ``/metrics``, scraped through the server, counts each of
them, and shows the role, the lag and the event stream. Under gunicorn's two
workers (prometheus_client's multiprocess mode) the counts are every
worker's, summed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import litefs_route.prometheus
from litefs_route import ensure_primary
from litefs_route.asgi import PrimaryRoutingMiddleware
from litefs_route_devcluster import free_port
from tests.support import Mount, serve_asgi, server_process
from tests.test_django import django_server

ME = "e784079b449483"
PRIMARY = "3d8d9e5b711e68"
OPTIONS: dict[str, Any] = {
    "cache_ttl": 3600,
    "primary_wait": 0.3,
    "litefs_api_url": "off",
    "database": "app.db",
    "consistency_wait": 0.05,
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def check_metrics_move(client: httpx.Client, mount: Mount, write: str = "/w", guarded: str = "/guarded") -> None:
    """On a replica (the mount says so before the server starts; the cache keeps it), then with no primary."""
    mount.set_pos("app.db", 1)
    before = scrape(client)
    assert client.post(write).status_code == 409
    assert client.post(write).status_code == 409
    assert client.get(guarded).status_code == 409
    assert [client.get("/read").status_code for _ in range(3)] == [200] * 3
    # Read at the scrape; routing keeps its cached reading. Under 750 ms: a gunicorn worker whose first
    # reading this is (it served none of the requests above) takes its primary as established at once.
    mount.set_lag(500)
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("litefs_route_requests_total", outcome="replayed") == 3
    assert moved("litefs_route_replays_total", reason="write") == 2
    assert moved("litefs_route_replays_total", reason="ensure_primary") == 1
    assert moved("litefs_route_requests_total", outcome="ran") == 4  # the reads, and the first scrape
    assert value(after, "litefs_route_role", role="replica") == 1
    assert value(after, "litefs_route_role", role="primary") == 0
    assert value(after, "litefs_route_lag_seconds") == 0.5
    assert value(after, "litefs_route_event_stream_up") == 0

    # A read whose TXID (2; the replica is at 1) never comes: waits consistency_wait, then replayed.
    assert client.get("/read", headers={"Cookie": f"__txid={2:016x}"}).status_code == 409
    # Replayed here by Fly's proxy a millisecond ago (t: µs since the epoch); then t garbled, forged, absent.
    now_us = int(time.time() * 1_000_000)
    for t in [f"t={now_us - 1000};", "t=12x;", "t=99999999999999999999;", f"t={now_us + 3_600_000_000};", ""]:
        src = {"fly-replay-src": f"instance=x;region=ams;{t}state=litefs-route-hop-1"}
        assert client.post(write, headers=src).status_code == 409  # replayed on: this is a replica too
    timed = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(timed, name, **labels) - value(after, name, **labels)

    assert grew("litefs_route_txid_wait_seconds_count", outcome="timed_out") == 1
    assert grew("litefs_route_txid_wait_seconds_sum", outcome="timed_out") >= 0.05
    assert grew("litefs_route_replays_total", reason="read_your_writes") == 1
    assert grew("litefs_route_replay_latency_seconds_count") == 1  # the plausible t only
    assert 0 < grew("litefs_route_replay_latency_seconds_sum") < 60

    mount.make_no_primary()
    replayed = {"fly-replay-src": "instance=x;state=litefs-route-hop-1"}  # decided on a fresh reading
    assert client.post(write, headers=replayed).status_code == 503
    last = scrape(client)

    def since(name: str, **labels: str) -> float:
        return value(last, name, **labels) - value(timed, name, **labels)

    assert since("litefs_route_unavailable_total", reason="no_primary") == 1
    assert since("litefs_route_primary_wait_seconds_count", outcome="timed_out") == 1
    # The whole primary_wait, but for the instants before its first poll and after its last (< one poll, 50 ms).
    assert since("litefs_route_primary_wait_seconds_sum", outcome="timed_out") >= 0.3 - 0.05
    assert since("litefs_route_primary_wait_seconds_count", outcome="found") == 0


def starlette_app(registry: CollectorRegistry, mount: Mount) -> Any:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def w(request: Request) -> Response:
        return PlainTextResponse("wrote")

    async def guarded(request: Request) -> Response:
        ensure_primary()
        return PlainTextResponse("ran guarded")

    async def read(request: Request) -> Response:
        return PlainTextResponse("read")

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    options = {**OPTIONS, "litefs_dir": str(mount.path), "instance_id": ME}
    return Starlette(
        routes=[
            Route("/w", w, methods=["POST"]),
            Route("/guarded", guarded),
            Route("/read", read),
            Route("/metrics", metrics),
        ],
        middleware=[Middleware(PrimaryRoutingMiddleware, **options)],
    )


def test_metrics_move_under_uvicorn(mount: Mount) -> None:
    mount.make_replica(PRIMARY)
    registry = CollectorRegistry()
    metrics = litefs_route.prometheus.register(registry)
    try:
        with serve_asgi(starlette_app(registry, mount)) as url, httpx.Client(base_url=url, timeout=30) as client:
            check_metrics_move(client, mount)
    finally:
        metrics.unregister()


@contextmanager
def gunicorn(tmp_path: Path, mount: Mount, workers: int) -> Iterator[str]:
    port = free_port()
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {"LITEFS_DIR": str(mount.path), "FLY_MACHINE_ID": ME, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    argv = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}"]
    with server_process([*argv, "tests.prometheus_app:app"], port, env, tmp_path / "gunicorn.log") as server:
        yield server.url


def test_metrics_are_summed_over_gunicorns_workers(tmp_path: Path, mount: Mount) -> None:
    mount.make_replica(PRIMARY)  # each worker's first reading: routable at once (.lag is fresh)
    with gunicorn(tmp_path, mount, workers=2) as url, httpx.Client(base_url=url, timeout=30) as client:
        check_metrics_move(client, mount)


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_metrics_move_in_django(tmp_path: Path, mount: Mount, server: str) -> None:
    mount.make_replica(PRIMARY)
    env = {"LITEFS_ROUTE_PROMETHEUS": "1"}
    with (
        django_server(tmp_path, server, mount.path, ME, debug=False, options=OPTIONS, env=env) as django,
        httpx.Client(base_url=django.url, timeout=30) as client,
    ):
        check_metrics_move(client, mount, write="/write", guarded="/function")


def test_importing_litefs_route_imports_no_metrics_library() -> None:
    code = (
        "import sys, litefs_route, litefs_route.wsgi, litefs_route.asgi\n"
        "libraries = ('prometheus_client', 'sentry_sdk', 'opentelemetry')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in libraries))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
