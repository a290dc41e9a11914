"""Failover, replay loops and hostile input, in both adapters, on real servers.

Never lose a write, never loop, never 500: every row below has one defined
answer, the same under Flask/Werkzeug (WSGI) and Starlette/uvicorn (ASGI).
Requests whose exact bytes matter (lowercase methods, dot segments, encoded
paths, odd header bytes) are sent over a raw socket, so no client normalises them.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from litefs_route._routing import NodeRouting
from tests.apps import BodyReadRecorder, flask_app, starlette_app
from tests.support import Mount, dechunk, serve_under, wait_until

ME = "e784079b449483"
PRIMARY = "3d8d9e5b711e68"
OPTIONS: dict[str, Any] = {
    "instance_id": ME,
    "write_on_read": ["/auth/callback/*"],
    "passthrough": ["/static/*"],
    "cache_ttl": 0,
    "primary_wait": 0,  # a write with no primary known is answered at once
}
MARKER = "INJECTED"
# The only headers a response may carry: the app's, the server's and ours.
ALLOWED_HEADERS = {
    "allow",
    "cache-control",
    "connection",
    "content-length",
    "content-type",
    "date",
    "fly-instance",
    "fly-primary-instance",
    "fly-replay",
    "retry-after",
    "server",
    "transfer-encoding",
}
VISIBLE_ASCII = re.compile(rb"[\x20-\x7e]*")
BIG = 1_000_001  # one byte more than Fly's proxy replays


@dataclass
class Stack:
    url: str
    client: httpx.Client
    calls: list[str]
    body_reads: BodyReadRecorder
    routing: NodeRouting
    address: tuple[str, int]


@contextmanager
def _serve(adapter: str, litefs_dir: str | None, **options: Any) -> Iterator[Stack]:
    calls: list[str] = []
    recorder = BodyReadRecorder()
    opts = {**OPTIONS, **options}
    apps = flask_app(calls), starlette_app(calls)
    with (
        serve_under(adapter, *apps, outer=recorder, litefs_dir=litefs_dir, **opts) as served,
        httpx.Client(base_url=served.url, timeout=15) as client,
    ):
        yield Stack(served.url, client, calls, recorder, served.routing, served.address)


@pytest.fixture
def stack(adapter: str, mount: Mount) -> Iterator[Stack]:
    with _serve(adapter, str(mount.path)) as running:
        yield running


# -- raw HTTP -------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v.decode("latin-1") for n, v in self.headers if n.lower() == name.encode()]
        assert len(values) <= 1, f"{name} repeated: {values}"
        return values[0] if values else None


def raw_request(
    stack: Stack, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]] = (), body: bytes = b""
) -> RawResponse:
    """Send exactly these bytes (plus Host, Connection: close and the body's length)."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    declared = any(name.lower() == b"content-length" for name, _ in headers)
    if not declared and (body or method.upper() not in (b"GET", b"HEAD")):
        lines.append(b"Content-Length: %d" % len(body))
    data = b"\r\n".join(lines) + b"\r\n\r\n" + body
    with socket.create_connection(stack.address, timeout=15) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response: {raw!r}"
    status_line, *header_lines = head.split(b"\r\n")
    parsed = []
    for line in header_lines:
        name, colon, value = line.partition(b":")
        assert colon, f"malformed header line {line!r}"
        parsed.append((name.strip(), value.strip()))
    response = RawResponse(int(status_line.split(b" ")[1]), parsed, rest)
    if (response.header("transfer-encoding") or "").lower() == "chunked":
        response.body = dechunk(rest)
    return response


def assert_clean(headers: list[tuple[bytes, bytes]], body: bytes, *markers: str) -> None:
    """No header we did not expect, no control byte in any value, no echo of hostile input."""
    for name, value in headers:
        assert name.decode("latin-1").lower() in ALLOWED_HEADERS, f"unexpected header {name!r}: {value!r}"
        assert VISIBLE_ASCII.fullmatch(value), f"unsafe value in {name!r}: {value!r}"
        for marker in markers:
            assert marker.encode() not in value, f"{marker!r} echoed in {name!r}"
    for marker in markers:
        assert marker.encode() not in body, f"{marker!r} echoed in the body"


def assert_clean_httpx(response: httpx.Response, *markers: str) -> None:
    assert_clean(list(response.headers.raw), response.content, *markers)


def replay_value(hop: int) -> str:
    return f"instance={PRIMARY};state=litefs-route-hop-{hop};timeout=5s;fallback=force_self"


# -- a mount that does not say who is primary ------------------------------------


def _garbled(data: bytes) -> Callable[[Mount], None]:
    def setup(mount: Mount) -> None:
        mount.make_replica(PRIMARY)  # a replica's .lag, then its .primary turns to garbage
        mount.write_primary_raw(data)

    return setup


def _primary_is_a_directory(mount: Mount) -> None:
    mount.make_replica(PRIMARY)
    (mount.path / ".primary").unlink()
    (mount.path / ".primary").mkdir()  # open() works, read() fails with EISDIR


def _primary_is_a_symlink_loop(mount: Mount) -> None:
    mount.make_replica(PRIMARY)
    (mount.path / ".primary").unlink()
    (mount.path / ".primary").symlink_to(".primary")  # open() fails with ELOOP


UNKNOWN_PRIMARY = [
    ("crlf-header-injection", _garbled(b"x\r\nSet-Cookie: INJECTED=1\r\n\n")),
    ("fly-replay-injection", _garbled(b"a\r\nfly-replay: instance=INJECTED\n")),
    ("semicolon-fields", _garbled(b"3d8d9e5b711e68;state=INJECTED;region=ams\n")),
    ("empty-line-static-lease", _garbled(b"\n")),
    ("300-chars", _garbled(MARKER.encode() + b"a" * 292 + b"\n")),
    ("binary", _garbled(b"\xff" + MARKER.encode() + b"\x00\xfe\n")),
    ("two-lines", _garbled(MARKER.encode() + b"\n" + PRIMARY.encode() + b"\n")),
    ("space-separated", _garbled(PRIMARY.encode() + b" " + MARKER.encode() + b"\n")),
    ("unreadable-eisdir", _primary_is_a_directory),
    ("unreadable-eloop", _primary_is_a_symlink_loop),
]


@pytest.mark.parametrize("setup", [c[1] for c in UNKNOWN_PRIMARY], ids=[c[0] for c in UNKNOWN_PRIMARY])
def test_garbled_or_unreadable_primary_is_unknown(
    stack: Stack, mount: Mount, setup: Callable[[Mount], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="litefs_route")
    setup(mount)

    read = stack.client.get("/")
    assert (read.status_code, read.text) == (200, "ran")
    assert "fly-primary-instance" not in read.headers
    assert read.headers["fly-instance"] == ME
    assert_clean_httpx(read, MARKER, PRIMARY)

    write = stack.client.post("/", content=b"x")
    assert write.status_code == 503
    assert write.headers["retry-after"] == "2"
    assert "fly-replay" not in write.headers
    assert "fly-primary-instance" not in write.headers
    assert_clean_httpx(write, MARKER, PRIMARY)

    assert stack.calls == ["GET /"]  # the write never reached the app
    assert "-> no-primary" in caplog.text  # the role change was logged...
    assert MARKER not in caplog.text  # ...without the file's content


def test_primary_naming_this_instance_is_primary(stack: Stack, mount: Mount) -> None:
    mount.make_replica(ME)
    r = stack.client.post("/", content=b"x")
    assert (r.status_code, r.text) == (200, "ran")
    assert "fly-replay" not in r.headers
    assert r.headers["fly-primary-instance"] == ME
    assert stack.calls == ["POST /"]


# -- hostile requests -----------------------------------------------------------------

DOTDOT_CALLBACK = "/static/../auth/callback/x"
HUGE_REPLAY_SRC = b"instance=x;region=ams;t=1;state=litefs-route-hop-3;" + b"x" * 8192


@dataclass(frozen=True)
class Row:
    role: str  # "replica" (of PRIMARY) or "primary"
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    status: int = 200
    #: The expected fly-replay hop; None: no fly-replay header.
    hop: int | None = None
    #: What the app recorded, or None to assert it was not called.
    call: str | None = None
    #: (status, call) where Flask differs from Starlette, for the app's own answer.
    flask: tuple[int, str | None] | None = None


def replayed(method: bytes, target: bytes, *headers: tuple[bytes, bytes], hop: int = 1) -> Row:
    return Row("replica", method, target, headers, b"x" if method == b"POST" else b"", 409, hop, None)


def src(value: bytes) -> tuple[bytes, bytes]:
    return (b"Fly-Replay-Src", value)


def hop(n: int) -> tuple[bytes, bytes]:
    """fly-replay-src as Fly's proxy writes it after our n-th replay."""
    return src(b"instance=x;region=ams;t=1;state=litefs-route-hop-%d" % n)


def cookie(value: bytes) -> tuple[bytes, bytes]:
    return (b"Cookie", value)


HOSTILE = [
    # cookies: litefs-route reads none; malformed ones change nothing
    (
        "cookie-malformed",
        Row("replica", b"GET", b"/", (cookie(b'__txid=zz; __txid=; ;=;txnum=-1; a="x'),), call="GET /"),
    ),
    ("cookie-repeated", Row("replica", b"GET", b"/", (cookie(b"__txid=1"), cookie(b"__txid=2")), call="GET /")),
    ("cookie-on-write", replayed(b"POST", b"/", cookie(b"__txid=ffffffffffffffffffff; __txid"))),
    # fly-replay-src that Fly did not write: counts as no replay
    ("replay-src-huge-read", Row("replica", b"GET", b"/", (src(HUGE_REPLAY_SRC),), call="GET /")),
    ("replay-src-huge-write-counts-zero", replayed(b"POST", b"/", src(HUGE_REPLAY_SRC))),
    ("replay-src-no-number", replayed(b"POST", b"/", src(b"instance=x;state=litefs-route-hop-abc"))),
    ("replay-src-big-number", replayed(b"POST", b"/", src(b"state=litefs-route-hop-99999"))),
    ("replay-src-separators", replayed(b"POST", b"/", src(b";;;=;=;state;state="))),
    ("replay-src-obs-text", replayed(b"POST", b"/", src(b"\xff\xfeinstance=\x80;state=\xe9"))),
    ("replay-src-repeated", replayed(b"POST", b"/", src(b"a"), src(b"b"))),
    # replay loops: the hop counter in fly-replay's state, limit max_replays=3
    ("replay-hop-1", replayed(b"POST", b"/", hop(1), hop=2)),
    ("replay-hop-2", replayed(b"POST", b"/", hop(2), hop=3)),
    ("replay-hop-3-is-a-loop", Row("replica", b"POST", b"/", (hop(3),), b"x", status=503)),
    ("replay-hop-3-on-primary-runs", Row("primary", b"POST", b"/", (hop(3),), b"x", call="POST /")),
    # methods, exactly as sent: case-sensitive, any token is a write
    ("method-purge-replica", replayed(b"PURGE", b"/")),
    ("method-purge-primary", Row("primary", b"PURGE", b"/", (), b"x", call="PURGE /")),
    ("method-lowercase-get-replica-is-a-write", replayed(b"get", b"/")),
    # on the primary the app answers: Werkzeug upper-cases the method, Starlette does not
    ("method-lowercase-get-primary-runs-the-app", Row("primary", b"get", b"/", status=405, flask=(200, "GET /"))),
    ("method-odd-token-replica", replayed(b"X-CUSTOM~1", b"/")),
    # paths: globs match the decoded path, as LiteFS matches r.URL.Path
    ("path-utf8-write-on-read", replayed(b"GET", b"/auth/callback/%C3%A9")),
    ("path-encoded-letter-write-on-read", replayed(b"GET", b"/auth/%63allback/x")),
    ("path-encoded-slash-write-on-read", replayed(b"GET", b"/auth%2Fcallback/x")),
    ("path-query-not-matched", Row("replica", b"GET", b"/?/auth/callback/x", call="GET /")),
    ("path-non-utf8-read-app-404", Row("replica", b"GET", b"/%FF%FE", status=404)),
    ("path-non-utf8-write", replayed(b"POST", b"/%FF%FE")),
    # passthrough /static/* matches dot segments literally, before any write rule
    ("path-dotdot-passthrough", Row("replica", b"POST", b"/static/../admin", (), b"x", call="POST /static/../admin")),
    ("path-enc-dotdot-passthrough", Row("replica", b"POST", b"/static/%2E%2E/a", (), b"x", call="POST /static/../a")),
    (
        "path-dotdot-over-write-on-read",
        Row("replica", b"GET", b"/static/../auth/callback/x", call=f"GET {DOTDOT_CALLBACK}"),
    ),
]


@pytest.mark.parametrize("row", [c[1] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_request(adapter: str, stack: Stack, mount: Mount, row: Row) -> None:
    if row.role == "replica":
        mount.make_replica(PRIMARY)
    else:
        mount.make_primary()
    r = raw_request(stack, row.method, row.target, row.headers, row.body)
    status, call = row.flask if row.flask is not None and adapter == "wsgi" else (row.status, row.call)

    assert r.status == status, r
    assert_clean(r.headers, r.body, MARKER)
    assert r.header("fly-instance") == ME
    assert r.header("fly-primary-instance") == (PRIMARY if row.role == "replica" else ME)
    if row.hop is None:
        assert r.header("fly-replay") is None
    else:
        assert r.header("fly-replay") == replay_value(row.hop)
        assert PRIMARY.encode() in r.body
    if status == 503:
        assert r.header("retry-after") == "2"
        assert b"replayed 3 times" in r.body
    assert stack.calls == ([] if call is None else [call])
    if call is None and status not in (404, 405):
        assert stack.body_reads.reads == 0


# -- a replayed request is decided on fresh state ------------------------------------------


def test_replayed_request_reads_fresh_state_despite_the_cache(adapter: str, mount: Mount) -> None:
    with _serve(adapter, str(mount.path), cache_ttl=60) as stack:
        mount.make_replica(PRIMARY)
        warm = stack.client.get("/")
        assert warm.headers["fly-primary-instance"] == PRIMARY
        reads = stack.routing.cache.reads

        mount.make_primary()  # promoted; the cached reading still says replica
        cached = stack.client.post("/", content=b"x")
        assert cached.status_code == 409  # proves the cache is in use
        assert cached.headers["fly-replay"] == replay_value(1)
        assert stack.routing.cache.reads == reads

        src = {"fly-replay-src": "instance=x;region=ams;t=1;state=litefs-route-hop-1"}
        fresh = stack.client.post("/", content=b"x", headers=src)
        assert (fresh.status_code, fresh.text) == (200, "ran")
        assert fresh.headers["fly-primary-instance"] == ME
        assert stack.routing.cache.reads == reads + 1

        after = stack.client.post("/", content=b"x")  # the fresh reading refreshed the cache
        assert (after.status_code, after.text) == (200, "ran")
        assert stack.calls == ["GET /", "POST /", "POST /"]


# -- bodies Fly cannot replay ------------------------------------------------------------


def _chunks(total: int, size: int = 100_000) -> Iterator[bytes]:
    while total > 0:
        yield b"x" * min(size, total)
        total -= size


def test_replica_refuses_a_body_too_big_to_replay(stack: Stack, mount: Mount) -> None:
    mount.make_replica(PRIMARY)
    r = stack.client.post("/", content=b"x" * BIG)
    assert r.status_code == 413
    assert "fly-replay" not in r.headers
    assert "fly-force-instance-id" in r.text
    assert PRIMARY in r.text
    assert r.headers["fly-primary-instance"] == PRIMARY
    assert_clean_httpx(r)
    assert stack.calls == []
    assert stack.body_reads.reads == 0


def test_replica_refuses_a_declared_big_body_without_reading_it(stack: Stack, mount: Mount) -> None:
    mount.make_replica(PRIMARY)
    # Headers only: the 413 comes back although the body was never sent.
    r = raw_request(stack, b"POST", b"/", [(b"Content-Length", b"%d" % BIG)])
    assert r.status == 413
    assert b"fly-force-instance-id" in r.body
    assert stack.calls == []
    assert stack.body_reads.reads == 0


@pytest.mark.parametrize(
    ("size", "status"), [(900_000, 409), (1_000_000, 409), (1_100_000, 413)], ids=["under", "at-limit", "over"]
)
def test_replica_measures_a_chunked_body(stack: Stack, mount: Mount, size: int, status: int) -> None:
    mount.make_replica(PRIMARY)
    r = stack.client.post("/", content=_chunks(size))
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == status
    if status == 409:
        assert r.headers["fly-replay"] == replay_value(1)
    else:
        assert "fly-replay" not in r.headers
        assert "fly-force-instance-id" in r.text
    assert_clean_httpx(r)
    assert stack.calls == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_primary_runs_big_bodies(stack: Stack, mount: Mount, chunked: bool) -> None:
    mount.make_primary()
    r = stack.client.post("/", content=_chunks(1_100_000) if chunked else b"x" * BIG)
    assert (r.status_code, r.text) == (200, "ran")
    assert "fly-replay" not in r.headers
    assert stack.calls == ["POST /"]


# -- no primary known, then one appears ----------------------------------------------------


@pytest.mark.parametrize("becomes", ["replica", "primary"])
def test_write_waits_for_a_primary(adapter: str, mount: Mount, becomes: str) -> None:
    with _serve(adapter, str(mount.path), primary_wait=5) as stack:
        mount.make_no_primary()
        responses: list[httpx.Response] = []
        errors: list[BaseException] = []

        def post() -> None:
            try:
                responses.append(stack.client.post("/", content=b"x"))
            except BaseException as exc:  # re-raised by the test below
                errors.append(exc)

        reads = stack.routing.cache.reads
        thread = threading.Thread(target=post, daemon=True)
        thread.start()
        # In flight: it read the mount, found no primary, and is reading it again.
        wait_until(lambda: stack.routing.cache.reads >= reads + 3, what="the write to poll the mount")
        assert responses == []  # still waiting, not answered
        assert errors == []
        assert stack.calls == []

        if becomes == "replica":
            mount.make_replica(PRIMARY)
        else:
            mount.make_primary()
        thread.join(15)
        assert not thread.is_alive()
        assert errors == []
        [r] = responses
        if becomes == "replica":
            assert r.status_code == 409
            assert r.headers["fly-replay"] == replay_value(1)
            assert r.headers["fly-primary-instance"] == PRIMARY
            assert stack.calls == []
        else:
            assert (r.status_code, r.text) == (200, "ran")
            assert r.headers["fly-primary-instance"] == ME
            assert stack.calls == ["POST /"]


def test_write_without_a_primary_gives_up(adapter: str, mount: Mount) -> None:
    with _serve(adapter, str(mount.path), primary_wait=0.3) as stack:
        mount.make_no_primary()
        reads = stack.routing.cache.reads
        r = stack.client.post("/", content=b"x")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "2"
        assert "fly-replay" not in r.headers
        assert "fly-primary-instance" not in r.headers
        assert "no primary is known" in r.text
        assert stack.routing.cache.reads > reads + 1  # it did poll the mount while waiting
        assert stack.calls == []


# -- a chunked body that does not arrive in time -------------------------------------------


def _slow_chunked_post(stack: Stack, chunks: int, size: int, interval: float) -> RawResponse:
    """POST a chunked body a chunk every *interval* seconds (a slow client), and read the answer."""
    head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(stack.address, timeout=15) as sock:
        sock.sendall(head)
        stop = threading.Event()

        def send() -> None:
            for _ in range(chunks):
                if stop.wait(interval):
                    return
                try:
                    sock.sendall(b"%x\r\n" % size + b"x" * size + b"\r\n")
                except OSError:
                    return  # the server answered and closed: the rest is not wanted

        sender = threading.Thread(target=send)
        sender.start()
        received = b""
        while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        # Our replies carry a Content-Length (some servers keep the socket open
        # for the rest of a body nobody reads, so EOF may never come).
        length = int(re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", head)[1])  # type: ignore[index]
        while len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
        stop.set()
        sender.join()
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), received[:200]
    return RawResponse(int(status_line.split(b" ")[1]), [], body)


def test_a_slow_chunked_write_on_a_replica_gets_408_after_body_timeout(adapter: str, mount: Mount) -> None:
    """A chunked body trickling in (960 KB, one 70 KB chunk every 0.1 s) is measured for body_timeout only."""
    mount.make_replica(PRIMARY)
    with _serve(adapter, str(mount.path), body_timeout=0.3) as stack:
        r = _slow_chunked_post(stack, chunks=14, size=70_000, interval=0.1)
        assert r.status == 408
        assert b"did not arrive within 0.3 s" in r.body
        assert stack.calls == []


def test_a_stalled_chunked_write_on_an_asgi_replica_gets_408(mount: Mount) -> None:
    """One chunk, then nothing: the ASGI measurement is bounded even while no byte arrives."""
    mount.make_replica(PRIMARY)
    with _serve("asgi", str(mount.path), body_timeout=0.3) as stack:
        r = _slow_chunked_post(stack, chunks=1, size=10, interval=0)
        assert r.status == 408
        assert stack.calls == []
