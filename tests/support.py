"""Test support: a LiteFS mount written in LiteFS's exact formats, and real servers.

The mount is a real directory; the servers are real (uvicorn and Werkzeug's
threaded server on 127.0.0.1, in this process so tests can observe the app).
``serve_under`` serves a test's apps behind either adapter's middleware.
At the end, what the dev cluster's tests (``test_devcluster_*.py``) share.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from litefs_route import asgi, wsgi
from litefs_route._routing import NodeRouting
from litefs_route_devcluster.files import NO_PRIMARY_LAG, write_atomic, write_lag, write_position, write_primary

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from litefs_route.asgi import ASGIApp


class Mount:
    """A directory holding what a LiteFS FUSE mount shows, byte for byte.

    Written only through :mod:`litefs_route_devcluster.files`, the one writer
    of LiteFS's file formats (checked against real LiteFS in test_litefs_facts).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def set_lag(self, ms: int | None) -> None:
        if ms is None:
            (self.path / ".lag").unlink(missing_ok=True)
        else:
            write_lag(str(self.path), ms)

    def make_primary(self) -> None:
        write_primary(str(self.path), None)
        self.set_lag(0)

    def make_replica(self, primary: str, lag_ms: int = 12) -> None:
        write_primary(str(self.path), primary)
        self.set_lag(lag_ms)

    def make_no_primary(self) -> None:
        write_primary(str(self.path), None)
        self.set_lag(NO_PRIMARY_LAG)

    def write_primary_raw(self, data: bytes) -> None:
        """A ``.primary`` LiteFS would never write (garbled, hostile): for the tests of bad input."""
        write_atomic(str(self.path / ".primary"), data)

    def set_pos(self, database: str, txid: int, checksum: int = 0x1234ABCD) -> None:
        write_position(str(self.path), database, txid, checksum)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll for a condition (bounded): waiting for an event, not a sleep."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def logged(path: str | os.PathLike[str], text: str, timeout: float = 30.0) -> str:
    """The log at *path* once it holds *text*.

    A dev-cluster process's output reaches its log file through a thread of
    this process, after the process acted on it: a response can arrive
    before the line it logged first is in the file.
    """
    found: list[str] = []

    def holds() -> bool:
        found[:] = [Path(path).read_text(errors="replace")]
        return text in found[0]

    wait_until(holds, timeout=timeout, what=f"{text!r} in {path}")
    return found[0]


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serve_asgi(app: ASGIApp | Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1; yields the base URL."""
    import uvicorn

    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="auto", ws="auto")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, what="uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def serve_wsgi(app: WSGIApplication | Any) -> Iterator[str]:
    """Serve a WSGI app with Werkzeug's threaded server; yields the base URL."""
    from werkzeug.serving import make_server

    with serve_in_thread(make_server("127.0.0.1", 0, app, threaded=True)) as url:
        yield url


class _SocketServer(Protocol):
    server_port: int

    def serve_forever(self, poll_interval: float = ...) -> None: ...
    def shutdown(self) -> None: ...
    def server_close(self) -> None: ...


@contextmanager
def serve_in_thread(server: _SocketServer) -> Iterator[str]:
    """Run a ``socketserver``-style *server* (bound to 127.0.0.1) in a thread; yields its base URL."""
    # A short poll interval: shutdown takes 20 ms instead of 500.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def dechunk(data: bytes) -> bytes:
    """The payload of a body sent with ``Transfer-Encoding: chunked`` (well-formed, as tests read it)."""
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2 :]


# -- the same app under both adapters ----------------------------------------

#: The adapters, as the ``adapter`` fixture (conftest.py) names them: its params and the tests' ids.
ADAPTERS = ("wsgi", "asgi")


class Outer(Protocol):
    """Wraps the served app from outside everything (``tests.apps.BodyReadRecorder``)."""

    def wsgi(self, app: WSGIApplication) -> WSGIApplication: ...

    def asgi(self, app: ASGIApp) -> ASGIApp: ...


@dataclass(frozen=True)
class Served:
    url: str
    #: The middleware's routing (its reading of the mount, its read-your-writes watcher).
    routing: NodeRouting

    @property
    def address(self) -> tuple[str, int]:
        """(host, port), for a raw socket."""
        split = urlsplit(self.url)
        assert split.hostname is not None
        assert split.port is not None
        return split.hostname, split.port


@contextmanager
def serve_under(
    adapter: str, wsgi_app: Any, asgi_app: Any, *, outer: Outer | None = None, **options: Any
) -> Iterator[Served]:
    """Serve *wsgi_app* or *asgi_app*, as *adapter* says, behind its PrimaryRoutingMiddleware(**options).

    WSGI: a Flask app gets the middleware on its ``wsgi_app`` (Flask stays
    outermost, as its docs say to add WSGI middleware), any other WSGI
    callable is wrapped itself; served by Werkzeug. ASGI: the app is wrapped,
    served by uvicorn. *outer* wraps what is served, outside everything.
    """
    served: Any
    if adapter == "wsgi":
        if hasattr(wsgi_app, "wsgi_app"):
            middleware: Any = wsgi.PrimaryRoutingMiddleware(wsgi_app.wsgi_app, **options)
            wsgi_app.wsgi_app = middleware
            served = wsgi_app
        else:
            served = middleware = wsgi.PrimaryRoutingMiddleware(wsgi_app, **options)
        server = serve_wsgi(outer.wsgi(served) if outer is not None else served)
    elif adapter == "asgi":
        served = middleware = asgi.PrimaryRoutingMiddleware(asgi_app, **options)
        server = serve_asgi(outer.asgi(served) if outer is not None else served)
    else:
        raise ValueError(f"adapter must be one of {ADAPTERS}, got {adapter!r}")
    with server as url:
        yield Served(url, middleware.routing)


# -- the dev cluster's tests ---------------------------------------------------

#: The repository's root: the dev cluster runs its instances there (``app_dir``), so they import ASGI_APP.
ROOT = Path(__file__).resolve().parents[1]
ASGI_APP = "tests.devcluster_apps.asgi_app:app"
#: The header that sends a request through the front proxy to one instance.
FORCE = "fly-force-instance-id"


@dataclass
class ServerProcess:
    """A server in its own process group (see :func:`server_process`)."""

    url: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def server_process(argv: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[ServerProcess]:
    """Run a server command (its output to *log*) until it listens on *port*; stop its whole group after."""
    from litefs_route_devcluster import port_open, wait_for
    from litefs_route_devcluster.cluster import stop_process_group

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, start_new_session=True
        )

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{argv[:4]} exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        return port_open("127.0.0.1", port)

    try:
        wait_for(listening, timeout=30, message=f"{argv[:4]} did not listen on {port}")
        yield ServerProcess(f"http://127.0.0.1:{port}", port, log, process)
    finally:
        stop_process_group(process, 10, argv[0])


def read_if_exists(path: str) -> bytes | None:
    """A file's bytes, or None if there is no such file (a mount file LiteFS does not show)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def process_gone(pid: int) -> bool:
    """True once no process has *pid* (it exited and was reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def start_dev(
    *args: str,
    stdin: int,
    stderr: int = subprocess.DEVNULL,
    entry: tuple[str, ...] = ("litefs_route", "dev"),
) -> tuple[subprocess.Popen[str], list[str]]:
    """``python -m <entry> ARGS --port 0 -q`` started, and its output up to the "ready" line."""
    process = subprocess.Popen(
        [sys.executable, "-m", *entry, *args, "--port", "0", "-q"],
        cwd=ROOT,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("ready: front "):
            break
    return process, lines


# -- a primary that records requests byte for byte -----------------------------


@dataclass
class Received:
    """A request as the stand-in primary read it off the wire."""

    request_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower().encode()]


class StandInPrimary:
    """A primary on 127.0.0.1 that records each request exactly as received, and answers *response* as given.

    For what no real server does on purpose (answer with both framings) or
    lets through (a header line a client injected): forward mode's own bytes,
    as they leave the replica. ``url`` is its ``forward_url``.
    """

    OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 7\r\nConnection: close\r\n\r\nprimary"

    def __init__(self, response: bytes = OK) -> None:
        self.response = response
        self.received: list[Received] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(15)
                try:
                    self.received.append(self._read(conn))
                    conn.sendall(self.response)
                except (OSError, ValueError):
                    continue

    @staticmethod
    def _read(conn: socket.socket) -> Received:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ValueError(f"no complete head: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        request_line, *lines = head.split(b"\r\n")
        headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)]
        values = {n.lower(): v for n, v in headers}

        def more() -> bytes:
            chunk = conn.recv(65536)
            if not chunk:
                raise ValueError("the body ended early")
            return chunk

        if values.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while True:
                while b"\r\n" not in rest:
                    rest += more()
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(rest) < size + 2:
                    rest += more()
                body, rest = body + rest[:size], rest[size + 2 :]
                if size == 0:
                    break
        else:
            length = int(values.get(b"content-length", b"0"))
            while len(rest) < length:
                rest += more()
            body = rest[:length]
        return Received(request_line, headers, body)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
        self.listener.close()
        self.thread.join(10)


@contextmanager
def stand_in_primary(response: bytes = StandInPrimary.OK) -> Iterator[StandInPrimary]:
    primary = StandInPrimary(response)
    try:
        yield primary
    finally:
        primary.close()
