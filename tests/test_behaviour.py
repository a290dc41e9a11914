"""The behaviour table of docs/routing.md ("What happens to a request"), row by row, in both adapters, on real servers.

WSGI: Flask under Werkzeug's threaded server. ASGI: Starlette under uvicorn.
The mount is a real directory in LiteFS's formats.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from litefs_route import asgi, ensure_primary
from tests.apps import BodyReadRecorder, Gate, flask_app, starlette_app
from tests.support import Mount, serve_asgi, serve_under, wait_until

ME = "e784079b449483"
PRIMARY = "3d8d9e5b711e68"
OPTIONS: dict[str, Any] = {
    "instance_id": ME,
    "write_on_read": ["/auth/callback/*"],
    "passthrough": ["/static/*"],
    "cache_ttl": 0,  # every request sees the mount as the test just wrote it
}


@dataclass
class Stack:
    url: str
    client: httpx.Client
    calls: list[str]
    body_reads: BodyReadRecorder
    gate: Gate = field(default_factory=Gate)


@contextlib.contextmanager
def _serve(adapter: str, litefs_dir: str | None, **options: Any) -> Iterator[Stack]:
    calls: list[str] = []
    gate = Gate()
    recorder = BodyReadRecorder()
    opts = {**OPTIONS, **options}
    apps = flask_app(calls, gate), starlette_app(calls, gate)
    with (
        serve_under(adapter, *apps, outer=recorder, litefs_dir=litefs_dir, **opts) as served,
        httpx.Client(base_url=served.url, timeout=10) as client,
    ):
        yield Stack(served.url, client, calls, recorder, gate)


@pytest.fixture
def stack(adapter: str, mount: Mount) -> Iterator[Stack]:
    with _serve(adapter, str(mount.path)) as running:
        yield running


def assert_replayed(response: httpx.Response, stack: Stack, hop: int = 1) -> None:
    assert response.status_code == 409
    assert (
        response.headers["fly-replay"]
        == f"instance={PRIMARY};state=litefs-route-hop-{hop};timeout=5s;fallback=force_self"
    )
    assert response.headers["fly-primary-instance"] == PRIMARY
    assert response.headers["fly-instance"] == ME
    assert response.headers["content-type"].startswith("text/plain")
    if response.request.method != "HEAD":
        assert PRIMARY in response.text


# -- rows: where the app runs ------------------------------------------------


@pytest.mark.parametrize("how", ["option-and-env-unset", "option-empty"])
def test_no_mount_is_standalone(adapter: str, how: str, tmp_path: Any) -> None:
    litefs_dir = None if how == "option-and-env-unset" else ""
    with _serve(adapter, litefs_dir) as stack:
        r = stack.client.post("/", content=b"x")
        assert (r.status_code, r.text) == (200, "ran")
        assert r.headers["fly-primary-instance"] == ME
        assert r.headers["fly-instance"] == ME
        assert stack.calls == ["POST /"]


def test_a_configured_mount_that_is_missing_is_refused_at_once(
    adapter: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo in LITEFS_DIR: said when the middleware is built, and a write's 503 says it at once, not after a wait.

    Never standalone (every write would run here). ``primary_wait`` is ten
    minutes and the client's timeout ten seconds: a write that waited for a
    primary would fail the test. Once the directory appears, routing follows it.
    """
    from tests.apps import flask_app, starlette_app

    missing = tmp_path / "nope"
    calls: list[str] = []
    options = {**OPTIONS, "primary_wait": 600.0, "health_path": "/litefs/health", "litefs_api_url": "off"}
    reason = f"the LiteFS directory {missing} does not exist: litefs-route is misconfigured"
    with (
        caplog.at_level(logging.INFO, logger="litefs_route"),
        serve_under(adapter, flask_app(calls), starlette_app(calls), litefs_dir=str(missing), **options) as served,
        httpx.Client(base_url=served.url, timeout=10) as client,
    ):
        # At start-up, before any request: an error naming the path.
        [built] = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert built.levelno == logging.ERROR
        assert f"the LiteFS directory {missing} does not exist: litefs-route is misconfigured" in built.getMessage()

        assert client.get("/").status_code == 200  # reads run
        write = client.post("/", content=b"x")
        assert (write.status_code, write.headers["retry-after"]) == (503, "2")
        assert reason in write.text
        assert "election" not in write.text
        assert "fly-primary-instance" not in write.headers
        ensured = client.get("/ensure")  # ensure_primary() in the handler: settled on the same rule, no wait either
        assert (ensured.status_code, reason in ensured.text) == (503, True), ensured.text
        health = client.get("/litefs/health")
        assert health.status_code == 503
        assert reason in health.text
        assert calls == ["GET /"]  # the write never reached the app, ensure_primary() raised
        counts = served.routing.counters.snapshot()
        assert counts["unavailable_misconfigured"] == 2
        assert "primary_waits" not in counts

        # LiteFS mounts it (or the user fixes the path): no restart needed.
        Mount(missing).make_primary()
        ran = client.post("/", content=b"x")
        assert (ran.status_code, ran.text) == (200, "ran")
        assert client.get("/litefs/health").status_code == 200
    assert f"{missing} does not exist" in caplog.text


def test_primary_runs_writes(stack: Stack, mount: Mount) -> None:
    mount.make_primary()
    r = stack.client.post("/", content=b"x")
    assert (r.status_code, r.text) == (200, "ran")
    assert "fly-replay" not in r.headers
    assert r.headers["fly-primary-instance"] == ME
    assert r.headers["fly-instance"] == ME
    assert stack.calls == ["POST /"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_replica_runs_reads(stack: Stack, mount: Mount, method: str) -> None:
    mount.make_replica(PRIMARY)
    r = stack.client.request(method, "/")
    assert r.status_code == 200
    assert "fly-replay" not in r.headers
    assert r.headers["fly-primary-instance"] == PRIMARY
    assert r.headers["fly-instance"] == ME
    assert stack.calls == [f"{method} /"]


def test_replica_trace_is_not_replayed(stack: Stack, mount: Mount) -> None:
    mount.make_replica(PRIMARY)
    r = stack.client.request("TRACE", "/")
    assert "fly-replay" not in r.headers  # the app answers (405: it has no TRACE route)
    assert r.headers["fly-primary-instance"] == PRIMARY


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "PURGE"])
def test_replica_replays_writes_without_calling_the_app(stack: Stack, mount: Mount, method: str) -> None:
    mount.make_replica(PRIMARY)
    r = stack.client.request(method, "/", content=b"a body the middleware must not read")
    assert_replayed(r, stack)
    assert stack.calls == []
    assert stack.body_reads.reads == 0


def test_replica_replays_write_on_read_paths(stack: Stack, mount: Mount) -> None:
    mount.make_replica(PRIMARY)
    assert_replayed(stack.client.get("/auth/callback/github"), stack)
    assert_replayed(stack.client.head("/auth/callback/github"), stack)
    assert stack.calls == []


def test_passthrough_is_never_replayed(stack: Stack, mount: Mount) -> None:
    mount.make_replica(PRIMARY)
    r = stack.client.post("/static/upload")
    assert (r.status_code, r.text) == (200, "static")
    assert r.headers["fly-primary-instance"] == PRIMARY
    assert stack.calls == ["POST /static/upload"]


def test_no_header_invented_when_primary_unknown(stack: Stack, mount: Mount) -> None:
    mount.make_no_primary()
    r = stack.client.get("/")
    assert r.status_code == 200
    assert "fly-primary-instance" not in r.headers
    assert r.headers["fly-instance"] == ME


# -- ensure_primary() -----------------------------------------------------------


def test_ensure_primary_on_replica_replays(stack: Stack, mount: Mount) -> None:
    mount.make_replica(PRIMARY)
    assert_replayed(stack.client.get("/ensure"), stack)
    assert stack.calls == []


def test_ensure_primary_swallowed_still_replays(stack: Stack, mount: Mount) -> None:
    mount.make_replica(PRIMARY)
    assert_replayed(stack.client.get("/ensure-swallow"), stack)
    assert stack.calls == ["swallowed"]  # the handler ran on; its answer was replaced


@pytest.mark.parametrize("state", ["primary", "standalone"])
def test_ensure_primary_on_primary_returns(adapter: str, mount: Mount, state: str) -> None:
    with _serve(adapter, str(mount.path) if state == "primary" else None) as stack:
        r = stack.client.get("/ensure")
        assert (r.status_code, r.text) == (200, "wrote")
        assert stack.calls == ["ensure"]


def test_ensure_primary_without_primary_is_503(adapter: str, mount: Mount) -> None:
    # After waiting primary_wait for a primary, as a write does.
    mount.make_no_primary()
    with _serve(adapter, str(mount.path), primary_wait=0.2) as stack:
        r = stack.client.get("/ensure")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "2"
        assert "fly-replay" not in r.headers
        assert stack.calls == []


def test_instance_info_in_handler(stack: Stack, mount: Mount, monkeypatch: pytest.MonkeyPatch) -> None:
    mount.make_replica(PRIMARY)
    info = {"current": ME, "primary": PRIMARY, "is_primary": False, "region": None}
    assert stack.client.get("/info").json() == info
    mount.make_primary()
    monkeypatch.setenv("FLY_REGION", "ams")
    assert stack.client.get("/info").json() == {**info, "primary": ME, "is_primary": True, "region": "ams"}


# -- streaming, websockets, lifespan ------------------------------------------


def test_streaming_is_not_buffered(stack: Stack, mount: Mount) -> None:
    mount.make_replica(PRIMARY)
    # Chunk 0 is free to go at once: a WSGI server sends the headers only with
    # the first body chunk, so holding chunk 0 back would hold the headers too.
    stack.gate.release(0)
    with stack.client.stream("GET", "/stream") as r:
        assert r.headers["fly-primary-instance"] == PRIMARY
        chunks = r.iter_raw()
        first = next(chunks)
        # chunk 0 arrived while chunks 1 and 2 are still held back by the app
        assert first == b"chunk0;"
        assert not stack.gate.events[1].is_set()
        stack.gate.release(1)
        stack.gate.release(2)
        assert b"".join(chunks) == b"chunk1;chunk2;"


def test_websocket_and_lifespan_pass_through(mount: Mount) -> None:
    from websockets.sync.client import connect

    started: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        started.append("startup")
        yield

    inner = starlette_app([], lifespan=lifespan)
    mount.make_replica(PRIMARY)
    app = asgi.PrimaryRoutingMiddleware(inner, litefs_dir=str(mount.path), **OPTIONS)
    with serve_asgi(app) as url:
        wait_until(lambda: started == ["startup"], what="lifespan startup")
        with connect(url.replace("http", "ws") + "/ws") as ws:
            ws.send("hi")
            assert ws.recv() == "echo:hi"


# -- counters ---------------------------------------------------------------------------------


def test_counters(adapter: str, mount: Mount) -> None:
    """What requests ended in, and what they waited for, counted per routing."""
    from tests.apps import flask_app, starlette_app

    mount.make_replica(PRIMARY)
    mount.set_pos("app.db", 1)
    calls: list[str] = []
    options: dict[str, Any] = {
        "litefs_dir": str(mount.path),
        "instance_id": ME,
        "database": "app.db",
        "consistency_wait": 0.05,
        "primary_wait": 0.05,
        "replay_body_limit": 10,
        "cache_ttl": 0,
    }
    with (
        serve_under(adapter, flask_app(calls), starlette_app(calls), **options) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        assert client.post("/").status_code == 409
        assert client.post("/", content=b"x" * 11).status_code == 413
        assert client.get("/", headers={"Cookie": f"__txid={2:016x}"}).status_code == 409  # TXID 2 never comes
        mount.make_no_primary()
        assert client.post("/").status_code == 503
        counts = served.routing.counters.snapshot()
    waited = counts.pop("primary_wait_seconds")
    assert counts == {
        "replays": 1,
        "too_large": 1,
        "consistency_waits": 1,
        "read_replays": 1,
        "primary_waits": 1,
        "unavailable_no_primary": 1,
    }
    assert waited >= 0.05


# -- the health check -------------------------------------------------------------------------

HEALTH_CASES = [
    # id, the mount, method, max_lag, expected status, expected body start
    ("primary", "primary", "GET", 10.0, 200, "OK"),
    ("replica-in-sync", "replica-12ms", "GET", 10.0, 200, "OK"),
    ("replica-behind", "replica-20s", "GET", 10.0, 503, "Replication lag exceeded: replication lag 20000 ms"),
    ("replica-behind-no-limit", "replica-20s", "GET", 0.0, 200, "OK"),
    ("replica-lag-unknown", "replica-no-lag", "GET", 10.0, 503, "Replication lag exceeded: replication lag unknown"),
    ("no-primary", "no-primary", "GET", 10.0, 503, "Replication lag exceeded"),
    ("a-post-is-routed-as-ever", "replica-12ms", "POST", 10.0, 409, "This request must run on instance"),
]


@pytest.mark.parametrize(
    ("state", "method", "max_lag", "status", "body"),
    [c[1:] for c in HEALTH_CASES],
    ids=[c[0] for c in HEALTH_CASES],
)
def test_health_check(
    adapter: str, mount: Mount, state: str, method: str, max_lag: float, status: int, body: str
) -> None:
    """As LiteFS's proxy answers /litefs/health: the app is not called, the lag is read on each check."""
    from tests.apps import flask_app, starlette_app

    if state == "primary":
        mount.make_primary()
    elif state == "no-primary":
        mount.make_no_primary()
    else:
        mount.make_replica(PRIMARY, lag_ms=12 if state == "replica-12ms" else 20_000)
        if state == "replica-no-lag":
            mount.set_lag(None)
    calls: list[str] = []
    options: dict[str, Any] = {
        "litefs_dir": str(mount.path),
        "instance_id": ME,
        "health_path": "/litefs/health",
        "max_lag": max_lag,
        "primary_wait": 0,
    }
    with serve_under(adapter, flask_app(calls), starlette_app(calls), **options) as served:
        r = httpx.request(method, served.url + "/litefs/health")
        assert (r.status_code, r.text[: len(body)]) == (status, body)
        assert calls == []
        if method == "GET":
            assert served.routing.cache.reads >= 1  # read on each check, not from a pushed state


def test_health_check_is_off_by_default(mount: Mount) -> None:
    from tests.apps import flask_app, starlette_app

    with serve_under("wsgi", flask_app([]), starlette_app([]), litefs_dir=str(mount.path)) as served:
        assert httpx.get(served.url + "/litefs/health").status_code == 404  # the app's own answer


def test_a_wsgi_request_leaves_nothing_to_the_garbage_collector(mount: Mount) -> None:
    """The context holds the environ, never the reverse: with the collector off, a request frees all it built."""
    from litefs_route import wsgi
    from litefs_route._context import RequestContext

    mount.make_primary()
    ran: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ensure_primary()  # the request's context is reachable while it runs (on the primary: it returns)
        ran.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ran"]

    middleware = wsgi.PrimaryRoutingMiddleware(
        app, litefs_dir=str(mount.path), instance_id=PRIMARY, litefs_api_url="off"
    )
    started: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append(status)
        return None

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable stays in gc.garbage, to look at
    try:
        for _ in range(20):
            environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/w", "CONTENT_LENGTH": "0", "wsgi.input": io.BytesIO()}
            body = middleware(environ, start_response)
            assert b"".join(body) == b"ran"
        del environ, body
        gc.collect()
        # (other threads of the test process may leave garbage of their own: only ours counts)
        ours = [
            o
            for o in gc.garbage
            if isinstance(o, RequestContext) or (isinstance(o, dict) and o.get("PATH_INFO") == "/w")
        ]
        assert ours == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert started == ["200 OK"] * 20
    assert ran == ["/w"] * 20
