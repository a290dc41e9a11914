"""A fuzz suite: the parsers, and forward mode's inbound and outbound sides, with a fixed budget.

Derandomised (the same examples every run, so CI is deterministic) and
bounded (``max_examples``; the whole file runs in well under 30 s). What it
asserts, whatever the input: no exception escapes; no header litefs-route
writes holds CR, LF, NUL or another control byte; a body is forwarded byte
for byte or the request is refused; the work of matching a path is linear in
its length. The end-to-end cases send raw bytes to real servers (Werkzeug,
uvicorn) in forward mode, in front of a stand-in primary that records what
arrives and answers what the case says.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litefs_route import asgi, wsgi
from litefs_route._consistency import TxidCookies
from litefs_route._decision import decide
from litefs_route._forwarding import cgi_target, forwarded_headers, relayed_headers, request_target
from litefs_route._globs import PathGlobs
from litefs_route._mount import NodeState, Role
from litefs_route._request import RequestInfo, replay_hops
from litefs_route._verdicts import Decision, Kind, Pending, replay_failure
from tests.plans import routing_for
from tests.support import Mount, StandInPrimary, serve_asgi, serve_wsgi
from tests.test_globs import CountingPath

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
# Each example of these is a request through a real server: fewer of them.
END_TO_END = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

SAFE_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
UNSAFE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
UNSAFE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
HOSTILE = ["a\r\nInjected: 1", "\n", "\r", "\x00", "x\x7fy", "\t ok \t", "é", "\u2028", "\udcff", " ", ""]

# Any text, weighted towards what breaks parsers: controls, separators, near-misses of real values.
text = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="=;, \t\r\n\x00\"'abc0123456789-_.", max_size=40),
    st.sampled_from(HOSTILE),
    st.sampled_from(
        [
            "instance=x;region=ams;t=1;state=litefs-route-hop-3",
            "state=litefs-route-hop-99999",
            "instance=a;reason=timeout;elapsed_ms=5000",
            "__txid=00000000000000ff; __txid_b.db=0000000000000001",
            "chunked",
            "gzip, chunked",
            "12",
            "-1",
            "0x10",
        ]
    ),
)
maybe_text = st.none() | text
latin1 = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=60)
header_pairs = st.lists(
    st.tuples(st.one_of(text, st.from_regex(r"[A-Za-z-]{1,20}", fullmatch=True)), text), max_size=12
)
STATES = [
    NodeState(Role.PRIMARY, "me", "me"),
    NodeState(Role.REPLICA, "me", "pp"),
    NodeState(Role.NO_PRIMARY, "me", None),
    NodeState(Role.STANDALONE, "me", "me"),
]
COOKIES = TxidCookies(("app.db", "b.db"))


def assert_safe(headers: list[tuple[str, str]]) -> None:
    for name, value in headers:
        assert SAFE_NAME.fullmatch(name.encode("latin-1")), name
        assert not UNSAFE_CHAR.search(value), (name, value)
        value.encode("latin-1")  # writable as a header


# -- the parsers ------------------------------------------------------------------------------


@FUZZ
@given(
    method=text,
    path=text,
    replay_src=maybe_text,
    content_length=maybe_text,
    transfer_encoding=maybe_text,
    cookie=maybe_text,
    replay_failed=maybe_text,
    websocket=st.booleans(),
    forward_claim=maybe_text,
    forward_hop=maybe_text,
)
def test_request_info_and_every_decision_never_raise(
    method: str,
    path: str,
    replay_src: str | None,
    content_length: str | None,
    transfer_encoding: str | None,
    cookie: str | None,
    replay_failed: str | None,
    websocket: bool,
    forward_claim: str | None,
    forward_hop: str | None,
) -> None:
    info = RequestInfo.from_headers(
        method,
        path,
        replay_src=replay_src,
        content_length=content_length,
        transfer_encoding=transfer_encoding,
        cookie=cookie,
        txid_cookies=COOKIES,
        replay_failed=replay_failed,
        websocket=websocket,
        forward_claim=forward_claim,
        forward_hop=forward_hop,
    )
    assert info.content_length is None or info.content_length >= 0
    assert 0 <= info.forward_hops <= 9
    assert info.ambiguous_length == (bool(content_length) and bool(transfer_encoding))
    routing = routing_for(
        instance_id="me", write_on_read=["/a/*/b"], passthrough=["/static/*"], forward_secret="s" * 16, primary_wait=0
    )
    for state in STATES:
        for forced in (False, True):
            decision = decide(info, state, routing.rules, forced=forced)
            assert isinstance(decision, Decision | Pending)
            if isinstance(decision, Decision) and decision.kind not in (Kind.RUN, Kind.FORWARD, Kind.REPLAY):
                assert_safe(list(routing.reply(decision).headers))
            if isinstance(decision, Decision) and decision.kind is Kind.REPLAY:
                assert_safe(list(routing.reply(decision).headers))


@FUZZ
@given(cookie=maybe_text)
def test_txid_cookies_parse_anything(cookie: str | None) -> None:
    txids = COOKIES.parse(cookie)
    assert txids is None or (len(txids) == 2 and all(0 <= t < 2**64 for t in txids))
    assert_safe(COOKIES.headers(txids or (None, None), (0,)))


@FUZZ
@given(value=maybe_text)
def test_fly_replay_src_and_failed_parse_anything(value: str | None) -> None:
    assert 0 <= replay_hops(value) <= 999
    if value is not None:
        reason = replay_failure(value)
        assert not UNSAFE_CHAR.search(reason)


@FUZZ
@given(patterns=st.lists(text, max_size=5), path=text)
def test_globs_build_or_refuse_and_match_with_linear_work(patterns: list[str], path: str) -> None:
    try:
        globs = PathGlobs(patterns)
    except ValueError:
        assert any(not p.startswith(("/", "*")) for p in patterns)
        return
    counting = CountingPath(path * 20)  # longer: the bound must hold as the path grows
    globs.match(counting)
    assert counting.scanned <= len(patterns) * (len(counting) + sum(map(len, patterns)))


# -- forward mode's headers and target, as functions -----------------------------------------------


@FUZZ
@given(
    headers=header_pairs,
    client=maybe_text,
    hop=st.integers(1, 9),
    length=st.none() | st.integers(0, 2**40),
    host=text,
)
def test_forwarded_headers_are_safe_and_framed_once(
    headers: list[tuple[str, str]], client: str | None, hop: int, length: int | None, host: str
) -> None:
    forwarded = forwarded_headers(
        headers, client=client, scheme="https", hop=hop, content_length=length, default_host=host or "h"
    )
    assert_safe(forwarded)
    names = [n.lower() for n, _ in forwarded]
    assert names.count("host") == 1
    assert names.count("content-length") + names.count("transfer-encoding") == 1
    assert "x-litefs-route-forward" not in names  # the sender adds the secret, never the client
    assert names.count("x-litefs-route-forward-hop") == 1


@FUZZ
@given(headers=header_pairs)
def test_relayed_headers_are_safe_and_never_frame_twice(headers: list[tuple[str, str]]) -> None:
    relayed = relayed_headers(headers)
    assert_safe(relayed)
    names = {n.lower() for n, _ in relayed}
    assert "transfer-encoding" not in names  # hop-by-hop: the server frames the relay
    if any(n.lower() == "transfer-encoding" for n, _ in headers):
        assert "content-length" not in names


@FUZZ
@given(target=st.one_of(text, latin1))
def test_request_target_is_visible_ascii_and_keeps_the_bytes(target: str) -> None:
    sent = request_target(target)
    assert re.fullmatch(r"[\x21-\x7e]*", sent), sent
    try:
        raw = target.encode("latin-1")
    except UnicodeEncodeError:
        raw = target.encode("utf-8", "surrogateescape" if _escapable(target) else "surrogatepass")
    assert unquote_to_bytes(sent) == unquote_to_bytes(raw)  # the same bytes once decoded


def _escapable(target: str) -> bool:
    try:
        target.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


@FUZZ
@given(target=st.text(alphabet=st.sampled_from("/a%\udcff\ud800é"), max_size=12))
def test_request_target_never_raises_on_surrogates(target: str) -> None:
    assert re.fullmatch(r"[\x21-\x7e]*", request_target(target))


@FUZZ
@given(path=latin1)
def test_a_rebuilt_wsgi_target_decodes_once_to_the_path(path: str) -> None:
    sent = request_target(cgi_target({"PATH_INFO": "/" + path}))
    assert unquote_to_bytes(sent) == ("/" + path).encode("latin-1")


# -- forward mode end to end: raw bytes in, raw bytes at the primary, raw bytes back --------------

TOKEN = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True).filter(
    # the framing is chosen on its own; these change what the server does with the connection
    lambda n: n.lower() not in {"content-length", "transfer-encoding", "upgrade", "expect", "host"}
)
# No bare CR or LF: http.server (under Werkzeug) and http.client parse them as line ends, so the
# server itself would see other framing; that parsing is theirs (docs/security.md), not ours.
VALUE = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
    st.sampled_from(["x\x00y", "x\x7fy", "\t", "é", "\x1b[0m", "keep-alive, X-Private"]),
)


@contextmanager
def _replicas(tmp_path: Path, primary: StandInPrimary) -> Iterator[list[str]]:
    mount = Mount(tmp_path / "replica")
    mount.make_replica("e784079b449483")
    options: dict[str, Any] = {
        "litefs_dir": str(mount.path),
        "instance_id": "3d8d9e5b711e68",
        "litefs_api_url": "off",
        "forward": "always",
        "forward_secret": "s3cret-shared-by-every-instance",
        "forward_url": primary.url,
    }

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        raise AssertionError("a replica in forward mode never runs a write")

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raise AssertionError("a replica in forward mode never runs a write")

    with ExitStack() as stack:
        urls = [
            stack.enter_context(serve_wsgi(wsgi.PrimaryRoutingMiddleware(wsgi_app, **options))),
            stack.enter_context(serve_asgi(asgi.PrimaryRoutingMiddleware(asgi_app, **options))),
        ]
        yield urls


def _exchange(url: str, data: bytes) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=15) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _head_and_body(raw: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:200]
    status_line, *lines = head.split(b"\r\n")
    headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)]
    if any(n.lower() == b"transfer-encoding" for n, _ in headers):
        out = b""
        while True:
            size_line, _, body = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, body = out + body[:size], body[size + 2 :]
        body = out
    return int(status_line.split(b" ")[1]), headers, body


def _run_end_to_end(tmp_path: Path, case: Callable[[list[str], StandInPrimary], None]) -> None:
    primary = StandInPrimary()
    try:
        with _replicas(tmp_path, primary) as urls:
            case(urls, primary)
    finally:
        primary.close()


def test_inbound_bodies_arrive_byte_exact_or_are_refused(tmp_path: Path) -> None:
    def case(urls: list[str], primary: StandInPrimary) -> None:
        @END_TO_END
        @given(
            headers=st.lists(st.tuples(TOKEN, VALUE), max_size=8),
            body=st.binary(max_size=3000),
            framing=st.sampled_from(["length", "chunked", "both"]),
            target=st.sampled_from(["/upload", "/a%252Fb/%2561?q=%25", "/x?y=1&z=%C3%A9"]),
        )
        def inbound(headers: list[tuple[str, str]], body: bytes, framing: str, target: str) -> None:
            for url in urls:
                del primary.received[:]
                lines = [f"POST {target} HTTP/1.1", "Host: client.example", "Connection: close"]
                lines += [f"{n}: {v}" for n, v in headers]
                if framing in ("length", "both"):
                    lines.append(f"Content-Length: {len(body)}")
                if framing in ("chunked", "both"):
                    lines.append("Transfer-Encoding: chunked")
                payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
                data = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (payload if framing != "length" else body)
                status, response_headers, response_body = _head_and_body(_exchange(url, data))
                for name, value in response_headers:
                    assert SAFE_NAME.fullmatch(name), name
                    assert not UNSAFE_BYTE.search(value), (name, value)
                if status != 200:  # refused, by the server or by us: then nothing reached the primary
                    assert 400 <= status < 600
                    assert primary.received == []
                    if framing == "both":
                        assert status == 400
                    continue
                assert framing != "both"
                assert response_body == b"primary"
                [received] = primary.received
                assert received.body == body  # byte for byte
                assert received.request_line == f"POST {target} HTTP/1.1".encode()
                assert len(received.header("host")) == 1
                for name, value in received.headers:
                    assert SAFE_NAME.fullmatch(name), name
                    assert not UNSAFE_BYTE.search(value), (name, value)

        inbound()

    _run_end_to_end(tmp_path, case)


def test_outbound_answers_are_relayed_safe_and_exact(tmp_path: Path) -> None:
    def case(urls: list[str], primary: StandInPrimary) -> None:
        @END_TO_END
        @given(
            headers=st.lists(st.tuples(TOKEN, VALUE), max_size=8),
            body=st.binary(max_size=3000),
            framing=st.sampled_from(["length", "chunked", "both", "close"]),
            status=st.sampled_from([200, 201, 400, 404, 500]),
        )
        def outbound(headers: list[tuple[str, str]], body: bytes, framing: str, status: int) -> None:
            lines = [f"HTTP/1.1 {status} Whatever", "Connection: close"]
            lines += [f"{n}: {v}" for n, v in headers]
            if framing in ("length", "both"):
                lines.append(f"Content-Length: {len(body) if framing == 'length' else 2}")
            if framing in ("chunked", "both"):
                lines.append("Transfer-Encoding: chunked")
            chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
            primary.response = (
                "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (chunked if "chunked" in lines[-1] else body)
            )
            for url in urls:
                request = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
                got_status, response_headers, response_body = _head_and_body(_exchange(url, request))
                for name, value in response_headers:
                    assert SAFE_NAME.fullmatch(name), name
                    assert not UNSAFE_BYTE.search(value), (name, value)
                lengths = [v for n, v in response_headers if n.lower() == b"content-length"]
                assert len(lengths) <= 1
                if any(n.lower() == b"transfer-encoding" for n, _ in response_headers):
                    assert lengths == []  # never both: a keep-alive client would desynchronise
                assert (got_status, response_body) == (status, body)

        outbound()

    _run_end_to_end(tmp_path, case)


@pytest.mark.parametrize("path", ["/" * 4096, "/" + "a/" * 2048])
def test_a_hostile_path_costs_linear_work_through_the_router(path: str) -> None:
    """The routing's glob matching, as a request reaches it (every GET with write_on_read set)."""
    routing = routing_for(instance_id="me", write_on_read=["/*/*/*/edit", "/api/*/items/*/*/edit"], primary_wait=0)
    counting = CountingPath(path)
    request = RequestInfo("GET", counting)
    assert decide(request, STATES[1], routing.rules) == Decision(Kind.RUN, write=False)
    assert 0 < counting.scanned <= 2 * (len(path) + 40)
