"""ensure_primary() ends the request in the replay in every framework mode.

The matrix from the issue: Flask in production, debug and testing modes, with
TRAP_HTTP_EXCEPTIONS, with user error handlers that would eat an ordinary
409; Starlette and FastAPI with async and sync endpoints, custom exception
handlers, the middleware inside (Middleware(...)) and outside (wrapping the
app), and FastAPI's Depends(ensure_primary). All against real servers.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from flask import Flask

from litefs_route import PrimaryRequired, asgi, ensure_instance, ensure_primary, get_instance_info, wsgi
from litefs_route._frameworks import starlette_primary_required, werkzeug_primary_required
from litefs_route._replies import Reply
from tests.plans import routing_for
from tests.support import Mount, Served, serve_asgi, serve_under, serve_wsgi

ME = "e784079b449483"
PRIMARY = "3d8d9e5b711e68"


def assert_replay(r: httpx.Response) -> None:
    assert r.status_code == 409, r.text
    assert r.headers["fly-replay"] == f"instance={PRIMARY};state=litefs-route-hop-1;timeout=5s;fallback=force_self"
    assert r.headers["fly-primary-instance"] == PRIMARY
    assert r.headers["fly-instance"] == ME


# -- Flask ---------------------------------------------------------------------


def _error_handlers(app: Flask, style: str) -> None:
    from flask import jsonify
    from werkzeug.exceptions import HTTPException

    if style == "exception":

        @app.errorhandler(Exception)
        def on_exception(e: Exception) -> Any:
            return jsonify(error="oops"), 500

    elif style == "http-exception-json":

        @app.errorhandler(HTTPException)
        def on_http(e: HTTPException) -> Any:
            return jsonify(error=str(e)), e.code or 500

    elif style == "409":

        @app.errorhandler(409)
        def on_409(e: Exception) -> Any:
            return "custom conflict", 409


FLASK_MODES = {
    "production": {},
    "debug": {"DEBUG": True},
    "testing": {"TESTING": True},
    "trap-http-exceptions": {"TRAP_HTTP_EXCEPTIONS": True},
}


@pytest.mark.parametrize("handlers", ["none", "exception", "http-exception-json", "409"])
@pytest.mark.parametrize("mode", list(FLASK_MODES))
@pytest.mark.parametrize("swallow", [False, True], ids=["raises", "swallows"])
def test_flask(mount: Mount, mode: str, handlers: str, swallow: bool) -> None:
    app = Flask("ensure_test")
    app.config.update(FLASK_MODES[mode])
    _error_handlers(app, handlers)
    ran_on: list[str] = []

    @app.route("/w", methods=["GET"])
    def w() -> str:
        try:
            ensure_primary()
        except PrimaryRequired:
            if not swallow:
                raise
        ran_on.append("after")
        return "wrote"

    app.wsgi_app = wsgi.PrimaryRoutingMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, litefs_dir=str(mount.path), instance_id=ME, cache_ttl=0
    )
    with serve_wsgi(app) as url:
        mount.make_replica(PRIMARY)
        assert_replay(httpx.get(url + "/w"))
        assert ran_on == (["after"] if swallow else [])
        mount.make_primary()
        r = httpx.get(url + "/w")
        assert (r.status_code, r.text) == (200, "wrote")


def test_flask_async_view(mount: Mount) -> None:
    app = Flask("ensure_async")

    @app.route("/w")
    async def w() -> str:
        ensure_primary()
        return "wrote"

    @app.route("/who")
    async def who() -> str:
        return get_instance_info().primary_instance or "-"

    app.wsgi_app = wsgi.PrimaryRoutingMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, litefs_dir=str(mount.path), instance_id=ME, cache_ttl=0
    )
    mount.make_replica(PRIMARY)
    with serve_wsgi(app) as url:
        assert_replay(httpx.get(url + "/w"))
        assert httpx.get(url + "/who").text == PRIMARY


# -- Starlette / FastAPI -----------------------------------------------------


def _starlette(handlers: str, placement: str, litefs_dir: str, debug: bool) -> Any:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    async def aw(request: Request) -> Response:
        ensure_primary()
        return PlainTextResponse("wrote")

    def sw(request: Request) -> Response:
        ensure_primary()
        return PlainTextResponse("wrote")

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)  # drops exc.headers

    async def on_exception(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "oops"}, status_code=500)

    exception_handlers: dict[Any, Callable[..., Any]] = {
        "none": {},
        "http-exception-drops-headers": {HTTPException: on_http},
        "409": {409: on_http},
        "exception": {Exception: on_exception},
    }[handlers]  # type: ignore[assignment]
    options: dict[str, Any] = {"litefs_dir": litefs_dir, "instance_id": ME, "cache_ttl": 0}
    middleware = [Middleware(asgi.PrimaryRoutingMiddleware, **options)] if placement == "inside" else []
    app = Starlette(
        debug=debug,
        routes=[Route("/w", aw), Route("/sw", sw)],
        middleware=middleware,
        exception_handlers=exception_handlers,
    )
    return asgi.PrimaryRoutingMiddleware(app, **options) if placement == "outside" else app


@pytest.mark.parametrize("handlers", ["none", "http-exception-drops-headers", "409", "exception"])
@pytest.mark.parametrize("placement", ["inside", "outside"])
@pytest.mark.parametrize("debug", [False, True], ids=["prod", "debug"])
def test_starlette(mount: Mount, handlers: str, placement: str, debug: bool) -> None:
    mount.make_replica(PRIMARY)
    with serve_asgi(_starlette(handlers, placement, str(mount.path), debug)) as url:
        assert_replay(httpx.get(url + "/w"))
        assert_replay(httpx.get(url + "/sw"))
        mount.make_primary()
        assert httpx.get(url + "/w").text == "wrote"
        assert httpx.get(url + "/sw").text == "wrote"


@pytest.mark.parametrize("placement", ["inside", "outside"])
def test_fastapi(mount: Mount, placement: str) -> None:
    from fastapi import Depends, FastAPI

    options: dict[str, Any] = {"litefs_dir": str(mount.path), "instance_id": ME, "cache_ttl": 0}
    app = FastAPI()
    if placement == "inside":
        app.add_middleware(asgi.PrimaryRoutingMiddleware, **options)

    @app.post("/items")
    async def create() -> dict[str, str]:
        ensure_primary()
        return {"ok": "yes"}

    @app.get("/sync")
    def sync_endpoint() -> dict[str, str]:
        ensure_primary()
        return {"ok": "yes"}

    @app.get("/dep", dependencies=[Depends(ensure_primary)])
    async def dep() -> dict[str, str]:
        return {"ok": "yes"}

    served: Any = asgi.PrimaryRoutingMiddleware(app, **options) if placement == "outside" else app
    mount.make_replica(PRIMARY)
    with serve_asgi(served) as url:
        # the POST never reaches FastAPI on a replica; the GETs call ensure_primary()
        assert_replay(httpx.post(url + "/items"))
        assert_replay(httpx.get(url + "/sync"))
        assert_replay(httpx.get(url + "/dep"))
        mount.make_primary()
        assert httpx.get(url + "/dep").json() == {"ok": "yes"}
        assert httpx.get(url + "/sync").json() == {"ok": "yes"}


def test_outside_a_request_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="outside a request"):
        ensure_primary()


def test_importing_the_package_imports_no_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, litefs_route, litefs_route.wsgi, litefs_route.asgi;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'starlette','werkzeug','flask','anyio','fastapi','django'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_app_answering_the_replay_with_a_header_generator_keeps_every_header(mount: Mount) -> None:
    """ASGI allows any iterable of headers, a one-shot generator included.

    After ensure_primary(), the middleware looks for the app's fly-replay and
    then tags the response: both must see every header the app sent.
    """
    mount.make_replica(PRIMARY)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            ensure_primary()
        except PrimaryRequired as exc:
            reply = exc.reply
        headers = ((name.lower().encode(), value.encode()) for name, value in reply.headers)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    routed = asgi.PrimaryRoutingMiddleware(app, litefs_dir=str(mount.path), instance_id=ME)
    with serve_asgi(routed) as url:
        r = httpx.get(url + "/")
    assert_replay(r)  # fly-replay is the first header: the one a second pass would miss
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["content-length"] == str(len(r.content))


# -- no primary known: ensure_primary() waits for one, as a write does ----------------------


def _waiting_app(adapter: str, routing: Any, called: list[str]) -> AbstractContextManager[Served]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    flask = Flask("ensure_wait")

    @flask.get("/visit")
    def visit() -> str:
        called.append("visit")
        ensure_primary()
        return "wrote"

    def visit_endpoint(request: Request) -> PlainTextResponse:
        called.append("visit")
        ensure_primary()
        return PlainTextResponse("wrote")

    app = Starlette(routes=[Route("/visit", visit_endpoint)])
    return serve_under(adapter, flask, app, routing=routing)


def test_ensure_primary_with_no_primary_waits_for_one(mount: Mount, adapter: str) -> None:
    """During a failover a GET that writes rides it out like a form POST: the replay once a primary is known."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support import wait_until

    mount.make_no_primary()
    routing = routing_for(litefs_dir=str(mount.path), instance_id=ME, cache_ttl=0, primary_wait=30)
    called: list[str] = []
    with _waiting_app(adapter, routing, called) as served, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.get, served.url + "/visit", timeout=30)
        wait_until(lambda: called == ["visit"], what="the handler to run")
        reads = routing.cache.reads
        # The middleware now re-reads the mount while it waits: let it see a primary.
        wait_until(lambda: routing.cache.reads >= reads + 2, what="the middleware to wait for a primary")
        assert not pending.done()
        mount.make_replica(PRIMARY)
        assert_replay(pending.result())


def test_ensure_primary_with_no_primary_gets_503_after_primary_wait(mount: Mount, adapter: str) -> None:
    mount.make_no_primary()
    routing = routing_for(litefs_dir=str(mount.path), instance_id=ME, cache_ttl=0, primary_wait=0.2)
    called: list[str] = []
    with _waiting_app(adapter, routing, called) as served:
        r = httpx.get(served.url + "/visit")
    assert (r.status_code, r.headers["retry-after"]) == (503, "2")
    assert "no primary is known" in r.text
    assert called == ["visit"]


# -- ensure_instance(): one named instance ------------------------------------------------------

OTHER = "9185e7a1c00d48"
INSTANCE_CASES = [
    # id, path, extra headers, expected status, expected fly-replay prefix, expected calls
    # (the handler catches the exception: the replay must survive that)
    ("this-instance", f"/instance/{ME}", {}, 200, None, [f"on {ME}"]),
    (
        "another-instance",
        f"/instance/{OTHER}",
        {},
        409,
        f"instance={OTHER};state=litefs-route-hop-1;timeout=5s;fallback=force_self",
        [f"swallowed {OTHER}"],
    ),
    (
        "replayed-too-often",
        f"/instance/{OTHER}",
        {"fly-replay-src": "instance=x;state=litefs-route-hop-3"},
        503,
        None,
        [f"swallowed {OTHER}"],
    ),
    ("primary-is-not-the-point", f"/instance/{PRIMARY}", {}, 409, f"instance={PRIMARY};", [f"swallowed {PRIMARY}"]),
]


@pytest.mark.parametrize(
    ("path", "headers", "status", "replay", "calls"),
    [c[1:] for c in INSTANCE_CASES],
    ids=[c[0] for c in INSTANCE_CASES],
)
def test_ensure_instance(
    mount: Mount,
    adapter: str,
    path: str,
    headers: dict[str, str],
    status: int,
    replay: str | None,
    calls: list[str],
) -> None:
    """A replica (ME) asked for one instance: here it runs, elsewhere it is replayed there, whatever the app does."""
    from tests.apps import flask_app, starlette_app

    mount.make_replica(PRIMARY)
    called: list[str] = []
    options: dict[str, Any] = {"litefs_dir": str(mount.path), "instance_id": ME}
    with serve_under(adapter, flask_app(called), starlette_app(called), **options) as served:
        r = httpx.get(served.url + path, headers=headers)
    assert r.status_code == status, r.text
    if replay is not None:
        assert r.headers["fly-replay"].startswith(replay)
    else:
        assert "fly-replay" not in r.headers
    assert called == calls


def test_ensure_instance_refuses_a_name_that_is_not_one() -> None:
    with pytest.raises(ValueError, match="instance_id"):
        ensure_instance("a b")


def test_ensure_instance_with_a_body_fly_cannot_replay_is_413() -> None:
    from litefs_route._decision import decide_instance
    from litefs_route._mount import NodeState, Role
    from litefs_route._request import RequestInfo
    from litefs_route._verdicts import Kind
    from tests.plans import rules

    state = NodeState(Role.REPLICA, ME, PRIMARY)
    big = RequestInfo("POST", "/x", content_length=1_000_001)
    decision = decide_instance(big, state, rules(), OTHER)
    assert decision is not None
    assert (decision.kind, decision.target) == (Kind.TOO_LARGE, OTHER)
    assert decide_instance(big, state, rules(), ME) is None


@pytest.mark.parametrize(
    "flavour", [werkzeug_primary_required, starlette_primary_required], ids=["werkzeug", "starlette"]
)
def test_the_framework_flavours_are_named_as_what_they_are(flavour: Callable[[Reply], PrimaryRequired]) -> None:
    """An error tracker or a traceback shows a readable name and message, not a function's local class."""
    exc = flavour(Reply(409, (), b"replay"))
    assert isinstance(exc, PrimaryRequired)
    name = type(exc).__qualname__
    assert (type(exc).__module__, name) == ("litefs_route._frameworks", name)
    assert "<locals>" not in name
    assert str(exc) == "this request must run on another instance (HTTP 409)"
