"""Issue 24's findings in forward mode and request framing, each on real servers.

The replica is a real server (Werkzeug, wsgiref, uvicorn; gunicorn for
Django) behind the middleware in forward mode; the primary is a stand-in
that records each request byte for byte (``tests.support.StandInPrimary``),
so what forward mode writes is seen exactly as it leaves. Requests whose
bytes matter are sent over a raw socket.
"""

from __future__ import annotations

import asyncio
import io
import socket
import wsgiref.simple_server
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from litefs_route import asgi, wsgi
from litefs_route._context import current_request
from litefs_route._decision import decide
from litefs_route._forwarding import OutgoingForward
from litefs_route._request import RequestInfo
from litefs_route._verdicts import Decision, Kind
from litefs_route_devcluster import free_port
from tests.support import (
    Mount,
    StandInPrimary,
    dechunk,
    serve_asgi,
    serve_in_thread,
    serve_wsgi,
    server_process,
    stand_in_primary,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from litefs_route.asgi import Receive, Scope, Send

PRIMARY = "e784079b449483"
REPLICA = "3d8d9e5b711e68"
SECRET = "s3cret-shared-by-every-instance"
SERVERS = ["werkzeug", "wsgiref", "uvicorn"]


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower().encode()]


def send_raw(url: str, data: bytes) -> RawResponse:
    """Send exactly *data* and read the answer to its end (the request says ``Connection: close``)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, sep, body = received.partition(b"\r\n\r\n")
    assert sep, received
    status_line, *lines = head.split(b"\r\n")
    headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)]
    response = RawResponse(int(status_line.split(b" ")[1]), headers, body)
    if [v.lower() for v in response.header("transfer-encoding")] == [b"chunked"]:
        response.body = dechunk(body)
    return response


# -- the replica, in forward mode, on each server ---------------------------------------------


def _options(mount: Mount, primary: StandInPrimary, forward: str = "always") -> dict[str, Any]:
    return {
        "litefs_dir": str(mount.path),
        "instance_id": REPLICA,
        "litefs_api_url": "off",
        "forward": forward,
        "forward_secret": SECRET,
        "forward_url": primary.url,
    }


def _wsgi_app(calls: list[str]) -> Any:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        calls.append(environ["REQUEST_METHOD"] + " " + environ["PATH_INFO"])
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ran"]

    return app


def _asgi_app(calls: list[str]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        calls.append(scope["method"] + " " + scope["path"])
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"ran"})

    return app


class Started:
    """A WSGI start_response that records the statuses."""

    def __init__(self) -> None:
        self.statuses: list[str] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
        self.statuses.append(status)
        return lambda data: None


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _serve_wsgiref(app: Any) -> Iterator[str]:
    """wsgiref: a server that keeps no raw copy of the URL (no RAW_URI / REQUEST_URI), as waitress and runserver."""

    class Server(wsgiref.simple_server.WSGIServer):
        pass

    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, server_class=Server, handler_class=_QuietHandler)
    with serve_in_thread(server) as url:
        yield url


@contextmanager
def replica(server: str, calls: list[str], **options: Any) -> Iterator[str]:
    """The replica on *server*, its middleware with *options*; yields its URL."""
    if server == "uvicorn":
        with serve_asgi(asgi.PrimaryRoutingMiddleware(_asgi_app(calls), **options)) as url:
            yield url
        return
    app = wsgi.PrimaryRoutingMiddleware(_wsgi_app(calls), **options)
    with serve_wsgi(app) if server == "werkzeug" else _serve_wsgiref(app) as url:
        yield url


@pytest.fixture
def replica_mount(tmp_path: Path) -> Mount:
    mount = Mount(tmp_path / "replica")
    mount.make_replica(PRIMARY)
    return mount


# -- 2: the path arrives as it was sent ---------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("target", [b"/admin%252Fx/%2561", b"/100%25", b"/a%2520b?q=%25"])
def test_forward_mode_sends_escapes_as_they_were_sent(server: str, target: bytes, replica_mount: Mount) -> None:
    """``%`` is quoted again: /admin%252Fx/%2561 does not run on the primary as /admin/x/a (issue 24, 2)."""
    calls: list[str] = []
    with stand_in_primary() as primary, replica(server, calls, **_options(replica_mount, primary)) as url:
        response = send_raw(
            url, b"POST " + target + b" HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        )
    assert (response.status, response.body) == (200, b"primary")
    [received] = primary.received
    assert received.request_line == b"POST " + target + b" HTTP/1.1"
    assert received.body == b"hi"
    assert calls == []


# -- 8: a raw UTF-8 target is percent-encoded, never a 500 ----------------------------------------


RAW_UTF8 = b"POST /caf\xc3\xa9/x?q=\xc3\xa9 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
# What each server makes of it: wsgiref hands over the raw bytes; Werkzeug's dev server
# UTF-8-encodes its latin-1 copy once more (its own doing: its app sees the same); h11
# (uvicorn) refuses such a request line itself.
UTF8_FORWARDED = {
    "wsgiref": b"POST /caf%C3%A9/x?q=%C3%A9 HTTP/1.1",
    "werkzeug": b"POST /caf%C3%83%C2%A9/x?q=%C3%83%C2%A9 HTTP/1.1",
    "uvicorn": None,
}


@pytest.mark.parametrize("server", SERVERS)
def test_a_raw_utf8_target_is_forwarded_percent_encoded(server: str, replica_mount: Mount) -> None:
    """http.client refuses non-ASCII: before, a 500; now the bytes are percent-encoded (issue 24, 8)."""
    calls: list[str] = []
    with stand_in_primary() as primary, replica(server, calls, **_options(replica_mount, primary)) as url:
        response = send_raw(url, RAW_UTF8)
    expected = UTF8_FORWARDED[server]
    if expected is None:
        assert response.status == 400  # the server's own answer: nothing reached the middleware
        assert primary.received == []
        return
    assert (response.status, response.body) == (200, b"primary")
    [received] = primary.received
    assert received.request_line == expected


def test_a_raw_utf8_target_in_django_forward_mode(tmp_path: Path, replica_mount: Mount) -> None:
    """Django's runserver (gunicorn and h11 refuse the request line themselves): no 500 either (issue 24, 8)."""
    import json
    import sys

    with stand_in_primary() as primary:
        port = free_port()
        options = {"forward": "always", "forward_url": primary.url}
        env = {
            "DJANGO_SETTINGS_MODULE": "tests.django_project.settings",
            "LITEFS_DIR": str(replica_mount.path),
            "LITEFS_API_URL": "off",
            "FLY_MACHINE_ID": REPLICA,
            "DJANGO_DEBUG": "0",
            "MAIL_DIR": str(tmp_path),
            "LITEFS_ROUTE_JSON": json.dumps(options),
            "LITEFS_ROUTE_FORWARD_SECRET": SECRET,
        }
        argv = [sys.executable, "-m", "django", "runserver", "--noreload", "--skip-checks", f"127.0.0.1:{port}"]
        with server_process(argv, port, env, tmp_path / "django.log") as django:
            response = send_raw(django.url, RAW_UTF8)
    assert (response.status, response.body) == (200, b"primary"), response
    [received] = primary.received
    assert received.request_line == b"POST /caf%C3%A9/x?q=%C3%A9 HTTP/1.1"


# -- 7: HTTP/1.0 without Host -------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_an_http10_write_without_host_is_forwarded_with_one(server: str, replica_mount: Mount) -> None:
    calls: list[str] = []
    with stand_in_primary() as primary, replica(server, calls, **_options(replica_mount, primary)) as url:
        response = send_raw(url, b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
    assert response.status == 200
    [received] = primary.received
    assert received.request_line == b"POST /x HTTP/1.1"
    [host] = received.header("host")
    assert host  # HTTP/1.1 requires one: the server the request reached
    assert received.body == b"hi"


# -- 3: Content-Length with Transfer-Encoding ---------------------------------------------------

BOTH_FRAMINGS = (
    b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"8\r\nabcdefgh\r\n0\r\n\r\n"
)


@pytest.mark.parametrize("server", ["werkzeug", "uvicorn"])
@pytest.mark.parametrize("role", ["replica-forward-always", "replica-forward-off", "primary"])
def test_content_length_with_transfer_encoding_is_refused_before_anything_runs(
    server: str, role: str, tmp_path: Path
) -> None:
    """RFC 9112 6.3: 400, the app not called, nothing forwarded or replayed, on any node (issue 24, 3)."""
    mount = Mount(tmp_path / "node")
    if role == "primary":
        mount.make_primary()
    else:
        mount.make_replica(PRIMARY)
    calls: list[str] = []
    with stand_in_primary() as primary:
        options = _options(mount, primary, forward="off" if role == "replica-forward-off" else "always")
        with replica(server, calls, **options) as url:
            response = send_raw(url, BOTH_FRAMINGS)
    assert response.status == 400, response
    assert b"Content-Length and Transfer-Encoding" in response.body
    assert response.header("fly-replay") == []
    assert calls == []
    assert primary.received == []


def test_content_length_with_transfer_encoding_is_a_decision() -> None:
    """The rule lives in the decision module: rule 0, before any other."""
    from litefs_route._mount import NodeState, Role
    from tests.plans import rules

    request = RequestInfo.from_headers(
        "GET", "/", replay_src=None, content_length="3", transfer_encoding="chunked", forward_claim=SECRET
    )
    for state in (NodeState(Role.PRIMARY, "a", "a"), NodeState(Role.REPLICA, "a", "b")):
        decision = decide(request, state, rules())
        assert isinstance(decision, Decision)
        assert decision.kind is Kind.BAD_REQUEST


# -- 9: the relay never announces a length next to chunked ---------------------------------------

BOTH_IN_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n"
    b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
)


@pytest.mark.parametrize("server", SERVERS)
def test_the_relay_drops_content_length_next_to_transfer_encoding(server: str, replica_mount: Mount) -> None:
    calls: list[str] = []
    with (
        stand_in_primary(BOTH_IN_RESPONSE) as primary,
        replica(server, calls, **_options(replica_mount, primary)) as url,
    ):
        response = send_raw(url, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
    assert response.status == 200
    assert b"2" not in response.header("content-length")  # the chunked body is 5 bytes: 2 would desync
    assert response.body == b"hello"


# -- 10: a header value with CR/LF/NUL never becomes a header line -----------------------------

HOSTILE_VALUES = [b"a\r\nInjected: 1", b"a\nInjected: 1", b"a\rInjected: 1", b"a\x00Injected: 1"]


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=["crlf", "lf", "cr", "nul"])
def test_asgi_forwarding_drops_header_values_with_control_bytes(value: bytes, replica_mount: Mount) -> None:
    """Servers refuse such bytes today; the middleware does not rely on it (an ASGI scope as any server could build)."""
    calls: list[str] = []
    sent: list[dict[str, Any]] = []
    with stand_in_primary() as primary:
        app = asgi.PrimaryRoutingMiddleware(_asgi_app(calls), **_options(replica_mount, primary))
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/x",
            "raw_path": b"/x",
            "query_string": b"",
            "headers": [(b"host", b"h"), (b"x-evil", value), (b"content-length", b"2")],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
        }
        messages = [{"type": "http.request", "body": b"hi", "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(dict(message))

        asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    [received] = primary.received
    assert received.header("injected") == []
    assert received.header("x-evil") == []  # dropped whole
    for _, header_value in received.headers:
        assert not any(byte in header_value for byte in b"\r\n\x00")


@pytest.mark.parametrize("value", [v.decode("latin-1") for v in HOSTILE_VALUES], ids=["crlf", "lf", "cr", "nul"])
def test_wsgi_forwarding_drops_header_values_with_control_bytes(value: str, replica_mount: Mount) -> None:
    """http.client refuses them with ValueError: before, a 500; now the header is dropped."""
    with stand_in_primary() as primary:
        app = wsgi.PrimaryRoutingMiddleware(_wsgi_app([]), **_options(replica_mount, primary))
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/x",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "CONTENT_LENGTH": "2",
            "HTTP_HOST": "h",
            "HTTP_X_EVIL": value,
            "wsgi.input": io.BytesIO(b"hi"),
            "wsgi.url_scheme": "http",
        }
        started = Started()
        body = b"".join(app(environ, started))
    assert (started.statuses, body) == (["200 OK"], b"primary")
    [received] = primary.received
    assert received.header("injected") == []
    assert received.header("x-evil") == []


# -- 4: the secret never prints -------------------------------------------------------------------


def test_the_forward_secret_is_in_no_repr_and_not_in_the_environ(tmp_path: Path) -> None:
    """Django's error mail prints request.META; the rules and an OutgoingForward are printed in logs (issue 24, 4)."""
    mount = Mount(tmp_path / "primary")
    mount.make_primary()
    seen: dict[str, str] = {}

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        seen["repr"], seen["str"] = repr(environ), str(environ)
        seen["context"] = repr(current_request.get())
        start_response("200 OK", [])
        return [b"ran"]

    middleware = wsgi.PrimaryRoutingMiddleware(
        app, litefs_dir=str(mount.path), instance_id=PRIMARY, litefs_api_url="off", forward_secret=SECRET
    )
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/x",
        "CONTENT_LENGTH": "0",
        "HTTP_X_LITEFS_ROUTE_FORWARD": SECRET,  # a genuine forwarded request
        "HTTP_X_LITEFS_ROUTE_FORWARD_HOP": "1",
        "wsgi.input": io.BytesIO(b""),
    }
    started = Started()
    assert b"".join(middleware(environ, started)) == b"ran"
    assert started.statuses == ["200 OK"]  # it ran: the secret was right
    assert seen["context"].startswith("<RequestContext POST '/x'")
    for text in seen.values():
        assert SECRET not in text
    assert SECRET not in repr(middleware.routing.rules)
    assert SECRET not in str(middleware.routing.rules)

    # An OutgoingForward about to be sent prints no secret either; its wire headers carry it.
    replica = Mount(tmp_path / "replica")
    replica.make_replica(PRIMARY)
    with stand_in_primary() as primary:
        routing = wsgi.PrimaryRoutingMiddleware(app, **_options(replica, primary)).routing
    request = RequestInfo.from_headers("POST", "/x", replay_src=None, content_length="0", transfer_encoding=None)
    decision = decide(request, routing.cache.refresh(), routing.rules)
    assert isinstance(decision, Decision)
    assert decision.kind is Kind.FORWARD
    forward = routing.prepare_forward(request, decision, [("Host", "h")], client=None, scheme="http", chunked=False)
    assert isinstance(forward, OutgoingForward)
    assert SECRET not in repr(forward)
    assert ("x-litefs-route-forward", SECRET) in forward.wire_headers()


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_content_length_with_transfer_encoding_is_refused_in_django(server: str, tmp_path: Path) -> None:
    """The Django middleware: the same 400, from the same rule (issue 24, 3)."""
    from tests.test_django import django_server

    mount = Mount(tmp_path / "node")
    mount.make_primary()
    with django_server(tmp_path, server, mount.path, PRIMARY, debug=False) as django:
        response = send_raw(django.url, BOTH_FRAMINGS)
        output = django.output()
    assert response.status == 400, response
    if b"Content-Length and Transfer-Encoding" not in response.body:  # the server refused it before Django
        assert server == "gunicorn", response
    assert "LOG ERROR" not in output
