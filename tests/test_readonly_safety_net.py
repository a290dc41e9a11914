"""Writes that slip through: SQLite's read-only error ends in a replay, not a 500.

The node believes it is primary (a cached reading), the mount has just moved
the primary elsewhere, and the handler's write hits a database SQLite refuses
as read-only, exactly as on a LiteFS replica ("attempt to write a readonly
database"). A file-format write version above 2 makes SQLite refuse writes
even for root, which a chmod would not.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from litefs_route import asgi, wsgi
from litefs_route._sqlite_errors import is_readonly_error
from tests.support import Mount, serve_asgi, serve_wsgi

ME = "e784079b449483"
PRIMARY = "3d8d9e5b711e68"


def readonly_database(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    db.close()
    data = bytearray(path.read_bytes())
    data[18] = 3  # file format write version > 2: SQLite opens it read-only
    path.write_bytes(bytes(data))
    return path


def write(path: Path) -> None:
    db = sqlite3.connect(path, timeout=0.05)
    try:
        with db:
            db.execute("INSERT INTO t VALUES (1)")
    finally:
        db.close()


def test_the_database_really_is_readonly(tmp_path: Path) -> None:
    db = readonly_database(tmp_path / "app.db")
    with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database") as info:
        write(db)
    assert is_readonly_error(info.value)


def test_wrapped_errors_are_recognised() -> None:
    class OperationalError(Exception):  # the shape of SQLAlchemy's and Django's wrappers
        def __init__(self, orig: BaseException | None = None) -> None:
            super().__init__("(sqlite3.OperationalError) wrapped")
            self.orig = orig

    inner = sqlite3.OperationalError("disk I/O error")
    assert is_readonly_error(OperationalError(inner))  # SQLAlchemy: .orig
    django_style = RuntimeError("Django-style wrapper")
    django_style.__cause__ = inner
    assert is_readonly_error(django_style)  # __cause__
    assert not is_readonly_error(sqlite3.OperationalError("no such table: t"))
    assert not is_readonly_error(ValueError("attempt to write a readonly database"))


def _flask(db: Path, mode: dict[str, Any]) -> Any:
    from flask import Flask

    app = Flask("readonly")
    app.config.update(mode)

    @app.post("/w")
    def w() -> str:
        write(db)
        return "wrote"

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("an ordinary bug")

    return app


def _starlette(db: Path) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    def w(request: Request) -> Response:
        write(db)
        return PlainTextResponse("wrote")

    def boom(request: Request) -> Response:
        raise ValueError("an ordinary bug")

    return Starlette(routes=[Route("/w", w, methods=["POST"]), Route("/boom", boom)])


@pytest.mark.parametrize(
    "stack", ["flask-production", "flask-debug", "flask-errorhandler", "starlette-inside"], ids=lambda s: str(s)
)
def test_slipped_write_is_replayed(stack: str, mount: Mount, tmp_path: Path) -> None:
    db = readonly_database(tmp_path / "app.db")
    options: dict[str, Any] = {"litefs_dir": str(mount.path), "instance_id": ME, "cache_ttl": 3600, "primary_wait": 0.3}
    if stack.startswith("flask"):
        app = _flask(db, {"DEBUG": True} if stack == "flask-debug" else {})
        if stack == "flask-errorhandler":  # the app's own catch-all: the safety net answers before it
            app.register_error_handler(Exception, lambda exc: ("the app's own error page", 500))
        app.wsgi_app = wsgi.PrimaryRoutingMiddleware(app.wsgi_app, **options)
        server = serve_wsgi(app)
    else:
        from starlette.middleware import Middleware

        app = _starlette(db)
        app.user_middleware.append(Middleware(asgi.PrimaryRoutingMiddleware, **options))
        server = serve_asgi(app)
    with server as url:
        mount.make_primary()
        assert httpx.get(url + "/nothing").headers["fly-primary-instance"] == ME  # cached: "I am primary"
        mount.make_replica(PRIMARY)  # the primary moved; the cache does not know yet
        r = httpx.post(url + "/w")
        assert r.status_code == 409, r.text
        assert r.headers["fly-replay"] == f"instance={PRIMARY};state=litefs-route-hop-1;timeout=5s;fallback=force_self"
        # an ordinary exception is still the app's own error
        assert httpx.get(url + "/boom").status_code == 500
        # nobody primary now: the slipped write waits primary_wait for one, then gets 503, not a 500
        mount.make_primary()
        replayed_read = httpx.get(url + "/nothing", headers={"fly-replay-src": "instance=x"})
        assert replayed_read.headers["fly-primary-instance"] == ME  # a fresh read re-warmed the cache
        mount.make_no_primary()
        r = httpx.post(url + "/w")
        assert (r.status_code, r.headers["retry-after"]) == (503, "2")


@pytest.mark.parametrize("stack", ["flask", "starlette"])
def test_a_write_sqlite_finds_locked_on_the_primary_is_a_503_not_a_500(
    stack: str, mount: Mount, tmp_path: Path
) -> None:
    """SQLITE_BUSY proves none of the transaction ran: refused with 503 + Retry-After, never replayed."""
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as setup:
        setup.execute("CREATE TABLE t (x)")
    setup.close()
    options: dict[str, Any] = {"litefs_dir": str(mount.path), "instance_id": ME, "primary_wait": 0.3}
    if stack == "flask":
        app = _flask(db, {})
        app.wsgi_app = wsgi.PrimaryRoutingMiddleware(app.wsgi_app, **options)
        server = serve_wsgi(app)
    else:
        from starlette.middleware import Middleware

        app = _starlette(db)
        app.user_middleware.append(Middleware(asgi.PrimaryRoutingMiddleware, **options))
        server = serve_asgi(app)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the lock for the whole request
    try:
        with server as url:
            r = httpx.post(url + "/w")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert (r.status_code, r.headers["retry-after"]) == (503, "2"), r.text
    assert "none of it ran" in r.text
    assert "fly-replay" not in r.headers


def test_flask_safety_net_is_connected_for_the_wrapped_app_only(tmp_path: Path) -> None:
    """Not process-wide: another Flask app's exceptions never reach the safety net.

    (Receivers for any sender, such as Sentry's, are every app's: compared with a fresh sender's.)
    """
    from flask import got_request_exception
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.middleware.proxy_fix import ProxyFix

    wrapped, behind_proxy_fix, mounted, other = (_flask(tmp_path / f"{n}.db", {}) for n in "abcd")
    wrapped.wsgi_app = wsgi.PrimaryRoutingMiddleware(wrapped.wsgi_app, instance_id=ME)
    wsgi.PrimaryRoutingMiddleware(ProxyFix(behind_proxy_fix.wsgi_app), instance_id=ME)
    wsgi.PrimaryRoutingMiddleware(DispatcherMiddleware(lambda e, s: [], {"/m": mounted}), instance_id=ME)
    wsgi.PrimaryRoutingMiddleware(lambda environ, start_response: [], instance_id=ME)  # not Flask: nothing connected
    everyones = set(got_request_exception.receivers_for(object()))
    for app in (wrapped, behind_proxy_fix, mounted):
        assert set(got_request_exception.receivers_for(app)) > everyones
        assert "handle_user_exception" in vars(app)  # answered before Flask's error path
    assert set(got_request_exception.receivers_for(other)) == everyones
    assert "handle_user_exception" not in vars(other)


def test_slipped_write_reads_the_mount_even_while_states_are_pushed(mount: Mount, tmp_path: Path) -> None:
    """A pushed state that is wrong (the stream lags or stalled): SQLite's refusal sends the write by the mount."""
    from litefs_route._mount import NodeState, Role

    db = readonly_database(tmp_path / "app.db")
    app = _flask(db, {})
    middleware = wsgi.PrimaryRoutingMiddleware(app.wsgi_app, litefs_dir=str(mount.path), instance_id=ME)
    app.wsgi_app = middleware
    mount.make_replica(PRIMARY)
    cache = middleware.routing.cache
    cache.push(NodeState(Role.PRIMARY, ME, ME, detail="a stale push"))  # what a lagging stream would say
    with serve_wsgi(app) as url:
        r = httpx.post(url + "/w")
    assert r.status_code == 409, r.text
    assert r.headers["fly-replay"] == f"instance={PRIMARY};state=litefs-route-hop-1;timeout=5s;fallback=force_self"
    # The settlement read the mount until the primary it names was established (state_cache.ESTABLISHED_AFTER).
    assert cache.reads >= 2
    assert cache.get().detail == "a stale push"  # kept until the stream's next event
    counts = middleware.routing.counters.snapshot()
    assert {k: counts[k] for k in ("safety_net", "replays", "primary_waits")} == {
        "safety_net": 1,
        "replays": 1,
        "primary_waits": 1,
    }


def test_a_settlement_trusts_the_mount_over_a_stale_push(mount: Mount, tmp_path: Path) -> None:
    """The mount says no primary, a lagging push still names one: the write waits for a primary, then 503."""
    from litefs_route._mount import NodeState, Role

    db = readonly_database(tmp_path / "app.db")
    app = _flask(db, {})
    middleware = wsgi.PrimaryRoutingMiddleware(
        app.wsgi_app, litefs_dir=str(mount.path), instance_id=ME, primary_wait=0.3
    )
    app.wsgi_app = middleware
    mount.make_no_primary()
    middleware.routing.cache.push(NodeState(Role.PRIMARY, ME, ME, detail="a stale push"))
    with serve_wsgi(app) as url:
        r = httpx.post(url + "/w")
    assert (r.status_code, r.headers["retry-after"]) == (503, "2")
    assert middleware.routing.cache.reads >= 2  # the settlement polled the mount, not the push


REPORT_STYLES = [
    # id, how the handler calls report_exception, expected status
    ("direct", "direct", 409),
    ("as-flasks-signal-calls-it", "flask-signal", 409),
    ("as-djangos-signal-calls-it", "django-signal", 409),
    ("a-signal-with-no-exception-at-hand", "no-exception", 200),
]


@pytest.mark.parametrize(("style", "status"), [c[1:] for c in REPORT_STYLES], ids=[c[0] for c in REPORT_STYLES])
def test_report_exception_as_a_signal_receiver_works_as_written(
    mount: Mount, tmp_path: Path, style: str, status: int
) -> None:
    """``got_request_exception.connect(report_exception)``: Flask and Django call it with their own arguments."""
    from flask import Flask

    from litefs_route import report_exception

    db = readonly_database(tmp_path / "app.db")
    app = Flask("report")

    @app.post("/w")
    def w() -> str:
        if style == "no-exception":
            reported = report_exception(signal=object(), sender=None, request=object())
            return f"reported: {reported}"
        try:
            write(db)
        except sqlite3.OperationalError as exc:  # an app's own handler, as a framework's would be
            if style == "direct":
                report_exception(exc)
            elif style == "flask-signal":
                report_exception(app, exception=exc)
            else:
                report_exception(signal=object(), sender=None, request=object())
        return "handled"

    app.wsgi_app = wsgi.PrimaryRoutingMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, litefs_dir=str(mount.path), instance_id=ME, cache_ttl=3600
    )
    with serve_wsgi(app) as url:
        mount.make_primary()
        assert httpx.get(url + "/nothing").status_code == 404  # cached: "I am primary"
        mount.make_replica(PRIMARY)
        r = httpx.post(url + "/w")
    assert r.status_code == status, r.text
    if status == 409:
        assert r.headers["fly-replay"].startswith(f"instance={PRIMARY};")
    else:
        assert r.text == "reported: False"
