"""A replay is never an error in Sentry: the real sentry-sdk, its framework integrations, real servers.

Each case ends in one of the middleware's own answers (a replay, a 503, a
413) and must leave no error event; then ``/boom``, a real bug in a
handler, must leave exactly its own (the witness works). Sentry records
into memory (``tests.sentry_witness``); its logging integration is on, so an
ERROR log (Flask's ``Exception on /w [POST]``) would be an event too.
Django runs in its own process (gunicorn and uvicorn) and writes its events
to a file.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import sentry_sdk

from litefs_route import PrimaryRequired, ensure_instance, ensure_primary
from litefs_route import asgi as asgi_adapter
from litefs_route import wsgi as wsgi_adapter
from tests.sentry_witness import (
    DSN,
    RecordingTransport,
    clear_recorded_events,
    exception_types,
    read_events_file,
    recorded_events,
    stop_sentry,
)
from tests.support import Mount, serve_asgi, serve_wsgi, wait_until
from tests.test_django import django_server
from tests.test_readonly_safety_net import readonly_database, write

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from litefs_route.asgi import ASGIApp, Receive, Scope, Send

ME = "e784079b449483"
PRIMARY = "3d8d9e5b711e68"
OTHER = "9185d2a1c3b4e7"
REPLAY = f"instance={PRIMARY};state=litefs-route-hop-1;timeout=5s;fallback=force_self"
OPTIONS: dict[str, Any] = {"cache_ttl": 3600, "primary_wait": 0.3, "litefs_api_url": "off"}


# -- the apps: the same routes in Flask, Starlette and FastAPI ----------------------------------


@dataclass
class Routes:
    """What each route does, shared by every framework's app."""

    db: Path
    mount: Mount

    def write(self) -> str:
        write(self.db)  # SQLite refuses it: the database is read-only, as on a LiteFS replica
        return "wrote"

    def guarded(self) -> str:
        ensure_primary()
        return "ran guarded"

    def guarded_then_primary(self) -> str:
        try:
            ensure_primary()
        except PrimaryRequired:
            self.mount.make_replica(PRIMARY)  # a primary appears while the middleware waits for one
            raise
        return "ran guarded"

    def instance(self) -> str:
        ensure_instance(OTHER)
        return "ran on the instance"

    def boom(self) -> str:
        raise RuntimeError("a real bug")

    def options(self) -> dict[str, Any]:
        """The middleware's options: this mount, as instance ME."""
        return {**OPTIONS, "litefs_dir": str(self.mount.path), "instance_id": ME}


def flask_app(routes: Routes) -> Any:
    from flask import Flask

    app = Flask("sentry")
    app.post("/w")(routes.write)
    app.get("/guarded", endpoint="guarded")(routes.guarded)
    app.get("/guarded-then-primary", endpoint="then")(routes.guarded_then_primary)
    app.get("/instance", endpoint="instance")(routes.instance)
    app.get("/boom", endpoint="boom")(routes.boom)
    app.get("/read", endpoint="read")(lambda: "read")
    app.wsgi_app = wsgi_adapter.PrimaryRoutingMiddleware(app.wsgi_app, **routes.options())  # type: ignore[method-assign]
    return app


def starlette_app(routes: Routes) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def route(path: str, run: Callable[[], str], method: str = "GET") -> Route:
        async def endpoint(request: Request) -> PlainTextResponse:
            return PlainTextResponse(run())

        return Route(path, endpoint, methods=[method])

    return Starlette(
        routes=[
            route("/w", routes.write, "POST"),
            route("/guarded", routes.guarded),
            route("/guarded-then-primary", routes.guarded_then_primary),
            route("/instance", routes.instance),
            route("/boom", routes.boom),
            route("/read", lambda: "read"),
        ],
        middleware=[Middleware(asgi_adapter.PrimaryRoutingMiddleware, **routes.options())],
    )


def fastapi_app(routes: Routes) -> Any:
    from fastapi import Depends, FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()
    app.add_middleware(asgi_adapter.PrimaryRoutingMiddleware, **routes.options())

    def primary_only() -> None:
        ensure_primary()

    app.post("/w", response_class=PlainTextResponse)(routes.write)  # a sync endpoint: in a worker thread
    app.get("/guarded", response_class=PlainTextResponse, dependencies=[Depends(primary_only)])(lambda: "ran guarded")
    app.get("/guarded-then-primary", response_class=PlainTextResponse)(routes.guarded_then_primary)

    @app.get("/instance", response_class=PlainTextResponse)
    async def instance() -> str:
        return routes.instance()

    @app.get("/boom")
    async def boom() -> str:
        return routes.boom()

    app.get("/read", response_class=PlainTextResponse)(lambda: "read")
    return app


class Finished:
    """Outermost shim: counts requests the server is done with (after Sentry's own wrapper returned)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def done(self) -> None:
        with self._lock:
            self.count += 1

    def wsgi(self, app: WSGIApplication) -> WSGIApplication:
        def shim(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            try:
                yield from app(environ, start_response)
            finally:
                self.done()

        return shim

    def asgi(self, app: ASGIApp) -> ASGIApp:
        async def shim(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await app(scope, receive, send)
            finally:
                if scope["type"] == "http":
                    self.done()

        return shim


def integrations(stack: str) -> list[Any]:
    if stack == "flask":
        from sentry_sdk.integrations.flask import FlaskIntegration

        return [FlaskIntegration()]
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.starlette import StarletteIntegration

    return [StarletteIntegration(), FastApiIntegration()]


@dataclass
class Server:
    url: str
    finished: Finished


@contextmanager
def sentry_server(stack: str, routes: Routes) -> Iterator[Server]:
    """*stack*'s app on a real server, in this process, with Sentry recording."""
    clear_recorded_events()
    sentry_sdk.init(
        dsn=DSN, transport=RecordingTransport, integrations=integrations(stack), auto_enabling_integrations=False
    )
    finished = Finished()
    try:
        if stack == "flask":
            server = serve_wsgi(finished.wsgi(flask_app(routes)))
        else:
            app = starlette_app(routes) if stack == "starlette" else fastapi_app(routes)
            server = serve_asgi(finished.asgi(app))
        with server as url:
            yield Server(url, finished)
    finally:
        stop_sentry()


# -- the cases ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    #: The node's reading as the request is routed (a fresh read: the cache holds it), then the mount as it runs.
    routed_on: str
    then: str
    method: str
    path: str
    status: int
    replay: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


def set_mount(mount: Mount, role: str) -> None:
    if role == "primary":
        mount.make_primary()
    elif role == "replica":
        mount.make_replica(PRIMARY)
    else:
        mount.make_no_primary()


CASES = {
    "write-replayed": Case("replica", "replica", "POST", "/w", 409, REPLAY),
    "ensure_primary-replayed": Case("replica", "replica", "GET", "/guarded", 409, REPLAY),
    "ensure_instance-replayed": Case(
        "primary", "primary", "GET", "/instance", 409, f"instance={OTHER};state=litefs-route-hop-1"
    ),
    "safety-net-replayed": Case("primary", "replica", "POST", "/w", 409, REPLAY),
    "safety-net-503": Case("primary", "no-primary", "POST", "/w", 503),
    "write-503-no-primary": Case("no-primary", "no-primary", "POST", "/w", 503),
    "ensure_primary-503-no-primary": Case("no-primary", "no-primary", "GET", "/guarded", 503),
    "ensure_primary-waits-then-replayed": Case("no-primary", "no-primary", "GET", "/guarded-then-primary", 409, REPLAY),
    "503-too-many-replays": Case(
        "replica", "replica", "POST", "/w", 503, headers=(("fly-replay-src", "instance=x;state=litefs-route-hop-9"),)
    ),
    "413-too-large": Case("replica", "replica", "POST", "/w", 413, body=b"x" * 1_000_001),
}


def check_case(client: httpx.Client, mount: Mount, case: Case) -> None:
    set_mount(mount, case.routed_on)
    named = {"primary": ME, "replica": PRIMARY, "no-primary": None}[case.routed_on]

    def routed_on() -> bool:
        # A replayed request reads the mount fresh, and the cache keeps that reading; a new
        # primary counts once it has been named for 0.1 s (the state cache's flicker rule).
        read = client.get("/read", headers={"fly-replay-src": "instance=x"})
        return bool(read.headers.get("fly-primary-instance") == named)

    wait_until(routed_on, what=f"the node to route as {case.routed_on}")
    set_mount(mount, case.then)
    response = client.request(case.method, case.path, headers=dict(case.headers), content=case.body)
    assert response.status_code == case.status, response.text
    if case.replay is not None:
        assert response.headers["fly-replay"].startswith(case.replay)
    else:
        assert "fly-replay" not in response.headers


def boom_reported(events: Callable[[], list[dict[str, Any]]]) -> bool:
    return "RuntimeError" in exception_types(events())


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("stack", ["flask", "starlette", "fastapi"])
def test_the_middlewares_answers_are_not_sentry_events(
    stack: str, case: Case, mount: Mount, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes = Routes(readonly_database(tmp_path / "app.db"), mount)
    answered: list[httpx.Response] = []
    hooks = {"response": [answered.append]}
    with (
        sentry_server(stack, routes) as server,
        httpx.Client(base_url=server.url, timeout=30, event_hooks=hooks) as client,
    ):
        check_case(client, mount, case)
        wait_until(lambda: server.finished.count == len(answered), what="the server to finish the requests")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == []  # Flask's "Exception on /w [POST]" among them, before the fix
        assert client.get("/boom").status_code == 500  # the witness: a real bug is still reported
        wait_until(lambda: server.finished.count == len(answered), what="the server to finish the requests")
        wait_until(lambda: boom_reported(recorded_events), what="the real bug's event")
    reported = exception_types(recorded_events())
    assert set(reported) == {"RuntimeError"}, reported


# -- Django, in its own process -----------------------------------------------------------------------

DJANGO_CASES = {
    "write-replayed": Case("replica", "replica", "POST", "/write", 409, REPLAY),
    "ensure_primary-replayed": Case("replica", "replica", "GET", "/function", 409, REPLAY),
    "ensure_primary-swallowed-replayed": Case("replica", "replica", "GET", "/swallowed", 409, REPLAY),
    "ensure_instance-replayed": Case(
        "primary", "primary", "GET", f"/instance/{OTHER}", 409, f"instance={OTHER};state=litefs-route-hop-1"
    ),
    "safety-net-replayed": Case("primary", "replica", "GET", "/unguarded-write", 409, REPLAY),
    "safety-net-503": Case("primary", "no-primary", "GET", "/unguarded-write", 503),
    "write-503-no-primary": Case("no-primary", "no-primary", "POST", "/write", 503),
    "ensure_primary-503-no-primary": Case("no-primary", "no-primary", "GET", "/function", 503),
}


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_djangos_answers_from_the_middleware_are_not_sentry_events(tmp_path: Path, mount: Mount, server: str) -> None:
    database = mount.path / "app.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, instance TEXT)")
    db.close()
    readonly_database_in_place(database)
    events = tmp_path / "events.jsonl"
    # Django's ASGI handler raises on uvicorn's lifespan probe, an event of its own: not probed.
    env = {"SENTRY_EVENTS_FILE": str(events), "UVICORN_LIFESPAN": "off"}
    with (
        django_server(tmp_path, server, mount.path, ME, debug=False, options=OPTIONS, env=env) as django,
        httpx.Client(base_url=django.url, timeout=30) as client,
    ):
        for name, case in DJANGO_CASES.items():
            check_case(client, mount, case)
            assert read_events_file(events) == [], name  # Django reports before it answers
        assert client.get("/boom").status_code == 500
        wait_until(lambda: boom_reported(lambda: read_events_file(events)), what="the real bug's event")
    reported = exception_types(read_events_file(events))
    assert set(reported) == {"RuntimeError"}, reported


def readonly_database_in_place(path: Path) -> None:
    """Make SQLite refuse writes to *path* (its file format's write version), as a LiteFS replica does."""
    data = bytearray(path.read_bytes())
    data[18] = 3
    path.write_bytes(bytes(data))
