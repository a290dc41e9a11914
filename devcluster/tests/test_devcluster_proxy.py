"""The dev cluster's front proxy (``devcluster.proxy``), over in-process backends: Fly's replay semantics.

No mocks and no sleeps standing in for synchronisation: assertions are about
what each backend saw and the order of events, not durations.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from litefs_route_devcluster import FrontProxy
from litefs_route_devcluster.proxy import parse_fly_replay
from tests.support import FORCE


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Respond = Callable[["_BackendHandler", Seen], None]


@dataclass
class Backend:
    name: str
    respond: Respond
    seen: list[Seen] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return ("127.0.0.1", int(self.server.server_address[1]))


class _BackendHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backend: Backend

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle_one(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
        self.backend.seen.append(seen)
        self.backend.respond(self, seen)

    do_GET = do_POST = do_PUT = handle_one

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def backends() -> Iterator[Callable[[str, Respond], Backend]]:
    started: list[Backend] = []

    def make(name: str, respond: Respond) -> Backend:
        backend = Backend(name, respond)
        handler = type("Handler", (_BackendHandler,), {"backend": backend})
        backend.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        backend.server.daemon_threads = True
        threading.Thread(target=backend.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        assert backend.server is not None
        backend.server.shutdown()
        backend.server.server_close()


def _echo(handler: _BackendHandler, seen: Seen) -> None:
    payload = {"by": handler.backend.name, "method": seen.method, "path": seen.path, "body": seen.body.decode()}
    handler.reply(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def _replay_to(target: str, state: str = "s1") -> Respond:
    def respond(handler: _BackendHandler, seen: Seen) -> None:
        handler.reply(409, b"go elsewhere", {"fly-replay": f"instance={target};state={state}"})

    return respond


def test_parse_fly_replay() -> None:
    assert parse_fly_replay("instance=abc;state=x=1") == {"instance": "abc", "state": "x=1"}
    assert parse_fly_replay(" Region = ams ; elsewhere=true;junk") == {"region": "ams", "elsewhere": "true"}


def test_replay_resends_the_whole_request_with_replay_src(backends: Callable[[str, Respond], Backend]) -> None:
    a = backends("a", _replay_to("b", "litefs-route-hop-1"))
    b = backends("b", _echo)
    with FrontProxy({"a": a.address, "b": b.address}, regions={"a": "ams", "b": "lhr"}) as front:
        response = httpx.post(
            front.url + "/form?x=1&y=2",
            content=b"name=value",
            headers={FORCE: "a", "X-Custom": "kept", "Content-Type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 200
    assert response.json() == {"by": "b", "method": "POST", "path": "/form?x=1&y=2", "body": "name=value"}
    assert len(a.seen) == 1
    assert len(b.seen) == 1
    original, replayed = a.seen[0], b.seen[0]
    assert "fly-replay-src" not in original.headers
    assert re.fullmatch(
        r"instance=a;region=ams;t=[0-9]{16};state=litefs-route-hop-1", replayed.headers["fly-replay-src"]
    )
    assert replayed.headers["x-custom"] == "kept"
    assert replayed.headers["content-type"] == "application/x-www-form-urlencoded"
    assert replayed.headers["fly-request-id"] == original.headers["fly-request-id"]
    assert [(e.from_instance, e.to_instance, e.state, e.hop) for e in front.replays] == [
        ("a", "b", "litefs-route-hop-1", 1)
    ]
    assert front.replay_count == 1
    assert front.served == {"b": 1}


def test_replay_limit_is_ten_then_pa02(backends: Callable[[str, Respond], Backend]) -> None:
    a = backends("a", _replay_to("b"))
    b = backends("b", _replay_to("a"))
    with FrontProxy({"a": a.address, "b": b.address}) as front:
        response = httpx.post(front.url + "/loop", content=b"x", headers={FORCE: "a"})
    assert response.status_code == 502
    assert "replay limit" in response.text
    assert "PA02" in response.text
    assert response.headers["fly-devcluster-error"] == "PA02"
    assert len(a.seen) + len(b.seen) == 11  # the original and 10 replays
    assert front.replay_count == 10
    assert front.replays[-1].refused == "replay-limit"


def test_body_over_1mb_is_forwarded_but_never_replayed(backends: Callable[[str, Respond], Backend]) -> None:
    a = backends("a", _replay_to("b"))
    b = backends("b", _echo)
    big = b"x" * 1_000_001
    with FrontProxy({"a": a.address, "b": b.address}) as front:
        refused = httpx.post(front.url + "/upload", content=big, headers={FORCE: "a"})
        direct = httpx.post(front.url + "/upload", content=big, headers={FORCE: "b"})
        small = httpx.post(front.url + "/upload", content=b"x" * 1_000_000, headers={FORCE: "a"})
    assert refused.status_code == 502
    assert "too large to replay" in refused.text
    assert direct.status_code == 200
    assert len(direct.json()["body"]) == len(big)
    assert small.status_code == 200
    assert small.json()["by"] == "b"
    assert len(a.seen) == 2
    assert len(a.seen[0].body) == len(big)
    assert len(b.seen) == 2  # the direct one and the replayed small one


def test_force_instance_and_round_robin(backends: Callable[[str, Respond], Backend]) -> None:
    a = backends("a", _echo)
    b = backends("b", _echo)
    with FrontProxy({"a": a.address, "b": b.address}) as front, httpx.Client(base_url=front.url) as client:
        forced = {client.get("/", headers={FORCE: "b"}).json()["by"] for _ in range(6)}
        balanced = [client.get("/").json()["by"] for _ in range(6)]
        unknown = client.get("/", headers={FORCE: "zzz"})
    assert forced == {"b"}
    assert sorted(balanced) == ["a", "a", "a", "b", "b", "b"]
    assert unknown.status_code == 502


def test_stopped_instance_is_skipped_by_round_robin(backends: Callable[[str, Respond], Backend]) -> None:
    a = backends("a", _echo)
    with FrontProxy({"a": a.address, "gone": ("127.0.0.1", 1)}) as front:
        assert {httpx.get(front.url + "/").json()["by"] for _ in range(4)} == {"a"}
        assert httpx.get(front.url + "/", headers={FORCE: "gone"}).status_code == 502


def test_streaming_is_not_buffered(backends: Callable[[str, Respond], Backend]) -> None:
    gate = threading.Event()
    events: list[str] = []

    def stream(handler: _BackendHandler, seen: Seen) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"8\r\nchunk-1;\r\n")
        handler.wfile.flush()
        released = gate.wait(20)
        events.append("chunk 2 sent" if released else "gate timed out")
        handler.wfile.write(b"8\r\nchunk-2;\r\n0\r\n\r\n")

    a = backends("a", stream)
    with FrontProxy({"a": a.address}) as front:
        host, port = front.address
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", "/stream")
            response = conn.getresponse()
            first = response.read1(65536)
            events.append(f"client got {first.decode()}")
            gate.set()
            rest = response.read()
        finally:
            conn.close()
    assert first == b"chunk-1;"
    assert rest == b"chunk-2;"
    assert events == ["client got chunk-1;", "chunk 2 sent"]


def _closed_port() -> tuple[str, int]:
    """An address nothing listens on: a Machine that is down."""
    from litefs_route_devcluster import free_port

    return ("127.0.0.1", free_port())


def _replay_with(fields: str) -> Respond:
    """Replay to "b" with extra fly-replay *fields*; once sent back (fly-replay-failed), echo it."""

    def respond(handler: _BackendHandler, seen: Seen) -> None:
        if "fly-replay-failed" in seen.headers:
            _echo(handler, seen)
        else:
            handler.reply(409, b"go elsewhere", {"fly-replay": f"instance=b;state=s1;{fields}"})

    return respond


@pytest.mark.parametrize(
    ("fields", "b_exists", "status", "reason"),
    [
        pytest.param("timeout=300ms;fallback=force_self", True, 200, "timeout", id="timeout-sent-back"),
        pytest.param("fallback=prefer_self", True, 200, "retries_exhausted", id="no-timeout-sent-back"),
        pytest.param("timeout=1s;fallback=force_self", False, 200, "no_candidate", id="no-such-instance-sent-back"),
        pytest.param("timeout=300ms", True, 502, None, id="timeout-without-fallback-is-502"),
    ],
)
def test_a_replay_that_cannot_be_delivered(
    backends: Callable[[str, Respond], Backend], fields: str, b_exists: bool, status: int, reason: str | None
) -> None:
    """As Fly: the target unreachable within ``timeout`` sends the request back with ``fly-replay-failed``."""
    a = backends("a", _replay_with(fields))
    instances = {"a": a.address, **({"b": _closed_port()} if b_exists else {})}
    with FrontProxy(instances, regions={"a": "ams"}, app_name="my-app") as front:
        response = httpx.post(front.url + "/w", content=b"body", headers={FORCE: "a"})
    assert response.status_code == status, response.text
    if reason is None:
        assert response.headers["fly-devcluster-error"] == "replay-unreachable"
        assert len(a.seen) == 1
        return
    assert response.json() == {"by": "a", "method": "POST", "path": "/w", "body": "body"}
    first, sent_back = a.seen
    assert "fly-replay-failed" not in first.headers
    failed = parse_fly_replay(sent_back.headers["fly-replay-failed"])
    assert {k: failed[k] for k in ("instance", "app", "region", "replay_source", "reason")} == {
        "instance": "b",
        "app": "my-app",
        "region": "ams",
        "replay_source": "a",
        "reason": reason,
    }
    elapsed_ms = int(failed["elapsed_ms"])
    if reason == "timeout":
        assert elapsed_ms >= 250  # tried until the timeout (300 ms, in 50 ms steps)
    assert "fly-replay-src" not in sent_back.headers
    assert [e.refused for e in front.replays] == [f"fallback-{reason}"]


def test_a_request_sent_back_may_not_replay_again(backends: Callable[[str, Respond], Backend]) -> None:
    def always_replay(handler: _BackendHandler, seen: Seen) -> None:
        handler.reply(409, b"go elsewhere", {"fly-replay": "instance=b;timeout=100ms;fallback=force_self"})

    a = backends("a", always_replay)
    with FrontProxy({"a": a.address, "b": _closed_port()}) as front:
        response = httpx.post(front.url + "/w", content=b"x", headers={FORCE: "a"})
    assert response.status_code == 502
    assert response.headers["fly-devcluster-error"] == "replay-after-fallback"
    assert len(a.seen) == 2


def test_an_instance_failing_its_health_check_leaves_the_rotation_until_it_passes(
    backends: Callable[[str, Respond], Backend],
) -> None:
    healthy = {"a": True, "b": True}

    def respond(handler: _BackendHandler, seen: Seen) -> None:
        name = handler.backend.name
        if seen.path == "/health":
            handler.reply(200 if healthy[name] else 503, b"ok" if healthy[name] else b"lagging")
        else:
            _echo(handler, seen)

    a, b = backends("a", respond), backends("b", respond)
    with FrontProxy({"a": a.address, "b": b.address}, health_path="/health", health_interval=0.05) as front:
        front.wait_checked()
        assert front.in_rotation == ["a", "b"]
        assert any(s.path == "/health" for s in b.seen)  # the check itself reached the instance

        healthy["b"] = False
        front.wait_checked()
        assert front.in_rotation == ["a"]
        with httpx.Client(base_url=front.url) as client:
            assert {client.get("/x").json()["by"] for _ in range(6)} == {"a"}
            # A request forced to it still reaches it, as on Fly.
            assert client.get("/x", headers={FORCE: "b"}).json()["by"] == "b"

            healthy["a"] = False  # none passes: every instance serves, rather than none
            front.wait_checked()
            assert front.in_rotation == ["a", "b"]
            assert {client.get("/x").json()["by"] for _ in range(6)} == {"a", "b"}

            healthy["a"] = healthy["b"] = True
            front.wait_checked()
            assert front.in_rotation == ["a", "b"]


def test_an_instance_that_does_not_answer_its_health_check_leaves_the_rotation(
    backends: Callable[[str, Respond], Backend],
) -> None:
    a, b = backends("a", _echo), backends("b", _echo)
    b_address = b.address
    with FrontProxy({"a": a.address, "b": b_address}, health_path="/health", health_interval=0.05) as front:
        front.wait_checked()
        assert front.in_rotation == ["a", "b"]
        assert b.server is not None
        b.server.shutdown()
        b.server.server_close()  # connections to it are refused now
        front.wait_checked()
        assert front.in_rotation == ["a"]
        with httpx.Client(base_url=front.url) as client:
            assert {client.get("/x").json()["by"] for _ in range(4)} == {"a"}
