"""Property tests: the parsers, the decision and the routing never raise, and
nothing they produce can carry a hostile byte into a response header.

Whatever a mount holds and whatever a client sends, every request gets a
decision, and every header value litefs-route writes is visible ASCII.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litefs_route._decision import decide
from litefs_route._drivers import drive
from litefs_route._mount import NodeState, Role, parse_lag, parse_position, parse_primary, read_node_state
from litefs_route._replies import OUR_TAGS, OUR_TAGS_BYTES
from litefs_route._request import RequestInfo, replay_hops
from litefs_route._routing import NodeRouting
from litefs_route._state_cache import StateCache
from litefs_route._verdicts import Decision, Kind, Outcome, Pending
from tests.plans import FixedIO, routing_for, rules

ME = "e784079b449483"
SAFE_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
# A header value we write: visible ASCII and spaces, no CR, LF, NUL or other controls.
SAFE_VALUE = re.compile(r"[\x20-\x7e]*")
SAFE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
REPLAY_VALUE = re.compile(r"instance=([^;]*);state=litefs-route-hop-([0-9]+);timeout=5s;fallback=force_self")

FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------

safe_tokens = st.from_regex(SAFE_TOKEN, fullmatch=True)
# Bytes that look like what LiteFS writes, and bytes that do not at all.
primary_bytes = st.one_of(
    st.binary(max_size=600),
    safe_tokens.map(lambda s: s.encode() + b"\n"),
    st.builds(lambda a, b: a.encode() + b + b"\n", safe_tokens, st.binary(max_size=8)),
    st.sampled_from([b"\n", b"", b"\r\n", b"a\r\nSet-Cookie: x=1\n", b"a;state=x\n", b"a" * 300 + b"\n", b"\x00\n"]),
)
lag_bytes = st.one_of(
    st.binary(max_size=40),
    st.integers(-(2**40), 2**40).map(lambda n: b"%+010d" % n),
    st.integers(0, 2**31).map(lambda n: b"%+010d\n" % n),
    st.sampled_from([b"+000000000", b"+2147483647", b"  +12  ", b"+", b"-0", b"\xff"]),
)
pos_bytes = st.one_of(
    st.binary(max_size=40),
    st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)).map(lambda t: b"%016x/%016x\n" % t),
)
# Paths as servers hand them over: any text, lone surrogates (surrogateescape
# of non-UTF-8 bytes), dot segments and still-encoded slashes.
paths = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), max_size=8).map(lambda s: "/" + s),
    st.lists(st.sampled_from(["auth", "callback", "static", "..", ".", "%2F", "%2f", "", "x", "\udcff", "é", "*"])).map(
        lambda parts: "/" + "/".join(parts)
    ),
)
methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "OPTIONS", "TRACE", "POST", "PUT", "PATCH", "DELETE", "PURGE", "get", ""]),
    st.text(max_size=20),
)
replay_srcs = st.one_of(
    st.none(),
    st.text(max_size=200),
    st.text(max_size=20).map(lambda s: s * 500),  # huge
    st.builds(
        lambda pre, n, post: f"{pre}state=litefs-route-hop-{n}{post}",
        st.sampled_from(["", "instance=x;", "instance=x;region=ams;t=1;", ";", " "]),
        st.integers(-5, 10_000),
        st.sampled_from(["", ";", "x", " ;t=2", "\n"]),
    ),
)
length_headers = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["", "0", "1000000", "1000001", "١٢", "1_000", " 12", "0x10", "+5"]),
)
transfer_encodings = st.one_of(st.none(), st.text(max_size=30), st.sampled_from(["chunked", "gzip, CHUNKED", ""]))
globs = st.lists(st.sampled_from(["/auth/callback/*", "/static/*", "*", "/*.css", "/session/refresh", "/%2F*"]))


def states(primary: str) -> list[NodeState]:
    """One reading per role, with the primary id as read_node_state gives it."""
    return [
        NodeState(Role.PRIMARY, ME, ME, 0),
        NodeState(Role.STANDALONE, ME, ME),
        NodeState(Role.REPLICA, ME, primary, 42),
        NodeState(Role.NO_PRIMARY, ME, None, 2147483647),
    ]


def assert_safe_headers(headers: Any) -> None:
    for name, value in headers:
        assert isinstance(name, str)
        assert isinstance(value, str)
        assert SAFE_NAME.fullmatch(name), name
        assert SAFE_VALUE.fullmatch(value), (name, value)
        assert value == value.strip(), (name, value)  # no leading/trailing space a proxy could fold


def assert_safe_reply(routing: NodeRouting, decision: Decision) -> None:
    reply = routing.reply(decision)
    assert reply.status in (400, 409, 413, 503)
    assert reply.status_line.split(" ", 1)[0] == str(reply.status)
    assert_safe_headers(reply.headers)
    names = [name.lower() for name, _ in reply.headers]
    assert len(names) == len(set(names))
    assert dict((n.lower(), v) for n, v in reply.headers)["content-length"] == str(len(reply.body))
    if decision.kind is Kind.REPLAY:
        replay = dict(reply.headers)["fly-replay"]
        match = REPLAY_VALUE.fullmatch(replay)
        assert match is not None, replay
        assert SAFE_TOKEN.fullmatch(match[1]), replay
        assert int(match[2]) >= 1
    if decision.kind is Kind.UNAVAILABLE:
        assert dict(reply.headers)["Retry-After"].isdigit()


# -- the mount ----------------------------------------------------------------


@FAST
@given(primary_bytes)
def test_parse_primary_returns_none_or_a_safe_token(data: bytes) -> None:
    primary = parse_primary(data)
    assert primary is None or SAFE_TOKEN.fullmatch(primary)


@FAST
@given(safe_tokens)
def test_parse_primary_accepts_what_litefs_writes(token: str) -> None:
    assert parse_primary(token.encode() + b"\n") == token


@FAST
@given(lag_bytes)
def test_parse_lag_never_raises(data: bytes) -> None:
    lag = parse_lag(data)
    assert lag is None or isinstance(lag, int)


@FAST
@given(pos_bytes)
def test_parse_position_never_raises(data: bytes) -> None:
    position = parse_position(data)
    assert position is None or (0 <= position.txid < 2**64 and 0 <= position.checksum < 2**64)


@FAST
@given(st.one_of(st.none(), primary_bytes), st.one_of(st.none(), lag_bytes), st.sampled_from([ME, "other-host"]))
def test_read_node_state_never_raises(primary: bytes | None, lag: bytes | None, instance: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if primary is not None:
            with open(os.path.join(tmp, ".primary"), "wb") as f:
                f.write(primary)
        if lag is not None:
            with open(os.path.join(tmp, ".lag"), "wb") as f:
                f.write(lag)
        state = read_node_state(tmp, instance)
    assert state.instance_id == instance
    assert state.primary_id is None or SAFE_TOKEN.fullmatch(state.primary_id)
    assert (state.primary_id is None) == (state.role is Role.NO_PRIMARY)
    if state.role is Role.PRIMARY:
        assert state.primary_id == instance
    if primary is not None and parse_primary(primary) is None:
        # Garbled: "primary unknown", and the detail (it goes to the logs) never quotes the file.
        assert state.role is Role.NO_PRIMARY
        assert re.fullmatch(r"\.primary garbled \([0-9]+ bytes\)", state.detail), state.detail
    routing = routing_for(instance_id=instance)
    assert_safe_headers(routing.tags(state))


@pytest.mark.parametrize(
    ("primary", "lag", "role"),
    [
        ("dir", None, Role.NO_PRIMARY),  # EISDIR from read()
        ("loop", None, Role.NO_PRIMARY),  # ELOOP from open()
        ("loop", "dir", Role.NO_PRIMARY),
        (None, "dir", Role.NO_PRIMARY),
        ("dangling", None, Role.NO_PRIMARY),  # ENOENT: absent, and no .lag (not a live mount)
        ("dangling", "zero", Role.PRIMARY),
        ("dangling", "lagging", Role.NO_PRIMARY),
        ("valid", "dir", Role.NO_PRIMARY),
    ],
)
def test_read_node_state_odd_files(primary: str | None, lag: str | None, role: Role) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind in ((".primary", primary), (".lag", lag)):
            path = os.path.join(tmp, name)
            if kind == "dir":
                os.mkdir(path)
            elif kind == "loop":
                os.symlink(name, path)
            elif kind == "dangling":
                os.symlink("nowhere", path)
            elif kind == "zero":
                with open(path, "wb") as f:
                    f.write(b"+000000000")
            elif kind == "lagging":
                with open(path, "wb") as f:
                    f.write(b"+2147483647")
            elif kind == "valid":
                with open(path, "wb") as f:
                    f.write(b"3d8d9e5b711e68\n")
        state = read_node_state(tmp, ME)
    assert state.role is role
    assert (state.primary_id is None) == (role is Role.NO_PRIMARY)


# -- requests -----------------------------------------------------------------

# A request as the adapters see it, and the routing's settings.
ROUTED_REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    "method": methods,
    "path": paths,
    "replay_src": replay_srcs,
    "content_length": length_headers,
    "transfer_encoding": transfer_encodings,
    "primary": safe_tokens,
    "write_on_read": globs,
    "passthrough": globs,
}


@FAST
@given(
    **ROUTED_REQUESTS,
    body_size=st.one_of(st.none(), st.integers(0, 3_000_000)),
    max_replays=st.integers(1, 9),
)
def test_every_request_gets_a_decision_and_safe_headers(
    method: str,
    path: str,
    replay_src: str | None,
    content_length: str | None,
    transfer_encoding: str | None,
    primary: str,
    write_on_read: list[str],
    passthrough: list[str],
    body_size: int | None,
    max_replays: int,
) -> None:
    routing = routing_for(
        instance_id=ME, write_on_read=write_on_read, passthrough=passthrough, max_replays=max_replays, primary_wait=0
    )
    request = RequestInfo.from_headers(
        method, path, replay_src=replay_src, content_length=content_length, transfer_encoding=transfer_encoding
    )
    assert request.content_length is None or request.content_length >= 0
    for state in states(primary):
        assert_safe_headers(routing.tags(state))
        variants = [
            decide(request, state, routing.rules),
            decide(request, state, routing.rules, body_size=body_size),
            decide(request, state, routing.rules, forced=True),
            planned_decision(routing, request, state, body_size or 0),
        ]
        for decision in variants:
            assert isinstance(decision, Decision | Pending)
            if isinstance(decision, Pending):  # I/O first: only a write off the primary
                assert not state.is_primary
                continue
            if request.ambiguous_length:  # both Content-Length and Transfer-Encoding: refused anywhere
                assert decision.kind is Kind.BAD_REQUEST
                assert_safe_reply(routing, decision)
                continue
            if state.is_primary:
                assert decision.kind is Kind.RUN
            if decision.kind is Kind.REPLAY:
                assert decision.target == primary
                assert 1 <= decision.hops <= max_replays
            if decision.kind in (Kind.REPLAY, Kind.TOO_LARGE, Kind.UNAVAILABLE):
                assert decision.write
                assert_safe_reply(routing, decision)
        # After the plan, nothing is left to wait for or measure.
        assert isinstance(variants[-1], Decision)


def _reads(state: NodeState) -> Callable[[str | None, str], NodeState]:
    """A StateCache reader that always finds *state*."""
    return lambda _dir, _id: state


@FAST
@given(**ROUTED_REQUESTS)
def test_the_fast_path_agrees_with_the_plan(
    method: str,
    path: str,
    replay_src: str | None,
    content_length: str | None,
    transfer_encoding: str | None,
    primary: str,
    write_on_read: list[str],
    passthrough: list[str],
) -> None:
    """outcome_without_io() either declines or gives exactly the plan's outcome."""
    request = RequestInfo.from_headers(
        method, path, replay_src=replay_src, content_length=content_length, transfer_encoding=transfer_encoding
    )
    for state in states(primary):
        routing = NodeRouting(
            instance_id=ME,
            rules=rules(write_on_read=write_on_read, passthrough=passthrough, primary_wait=0),
            cache=StateCache(None, ME, 3600, reader=_reads(state)),
            positions=None,
            txid_cookies=None,
            retry_after=2,
        )
        assert routing.outcome_without_io(request) is None  # nothing read yet: the plan reads
        routing.cache.refresh()
        fast = routing.outcome_without_io(request)
        planned = planned_decision(routing, request, state, 0)
        first = decide(request, state, routing.rules)
        if replay_src is not None or isinstance(first, Pending):
            assert fast is None  # fresh state, a wait for a primary, a body to measure: I/O
        else:
            assert fast is not None
            assert (fast.decision, fast.state, fast.clear_txids) == (planned, state, ())


@FAST
@given(
    method=ROUTED_REQUESTS["method"],
    path=ROUTED_REQUESTS["path"],
    primary=ROUTED_REQUESTS["primary"],
    write_on_read=ROUTED_REQUESTS["write_on_read"],
    passthrough=ROUTED_REQUESTS["passthrough"],
)
def test_a_remembered_verdict_is_the_plans_for_the_reading_it_is_used_on(
    method: str, path: str, primary: str, write_on_read: list[str], passthrough: list[str]
) -> None:
    """route() for a request with no routing headers: what it remembers is what the plan decides, reading by reading."""
    readings = states(primary)
    mount = [readings[0]]  # what the mount shows now
    routing = NodeRouting(
        instance_id=ME,
        rules=rules(write_on_read=write_on_read, passthrough=passthrough, primary_wait=0),
        cache=StateCache(None, ME, 3600, reader=lambda _dir, _id: mount[0]),
        positions=None,
        txid_cookies=None,
        retry_after=2,
    )
    for reading in readings:  # each reading in turn, twice each: a first verdict, then the remembered one
        mount[0] = reading
        routing.cache.refresh()
        for _ in range(2):
            seen = routing.cache.fresh()  # as the cache hands it out (a first reading may be held back)
            assert seen is not None
            request, routed = routing.route(method, path, None)
            assert (request.method, request.path, request.txids, request.replay_src) == (method, path, None, None)
            expected = drive(routing.plan(request), FixedIO(seen, body_size=0))
            outcome = routed if isinstance(routed, Outcome) else drive(routed, FixedIO(seen, body_size=0))
            assert (outcome.decision, outcome.state) == (expected.decision, seen)


def planned_decision(routing: NodeRouting, request: RequestInfo, state: NodeState, body_size: int) -> Decision:
    """Run the routing's plan with the real driver, on a mount that never changes."""
    return drive(routing.plan(request), FixedIO(state, body_size=body_size)).decision


@FAST
@given(replay_srcs)
def test_replay_hops_is_small_and_non_negative(replay_src: str | None) -> None:
    hops = replay_hops(replay_src)
    assert 0 <= hops <= 999


@FAST
@given(st.text(max_size=300))
def test_router_accepts_only_safe_instance_ids(instance_id: str) -> None:
    try:
        routing = routing_for(instance_id=instance_id)
    except ValueError:
        assert not SAFE_TOKEN.fullmatch(instance_id)
        return
    assert SAFE_TOKEN.fullmatch(routing.instance_id)
    assert_safe_headers(routing.tags(NodeState(Role.STANDALONE, routing.instance_id, routing.instance_id)))


def test_remembered_verdicts_stay_bounded_under_many_methods_and_paths() -> None:
    """Methods and paths are client input: however many a client sends, at most 512 verdicts are remembered."""
    routing = NodeRouting(
        instance_id=ME,
        rules=rules(primary_wait=0),
        cache=StateCache(None, ME, 3600, reader=lambda _dir, _id: NodeState(Role.PRIMARY, ME, ME)),
        positions=None,
        txid_cookies=None,
        retry_after=2,
    )
    routing.cache.refresh()
    for i in range(3000):
        method = "GET" if i % 2 else f"M{i % 97}"
        request, routed = routing.route(method, f"/p/{i}", None)
        assert isinstance(routed, Outcome)
        assert routed.decision.kind is Kind.RUN
        assert (request.method, request.path) == (method, f"/p/{i}")
    _, remembered = routing._verdicts
    assert 0 < sum(map(len, remembered.values())) <= 512
    assert len(remembered) <= 512
    # And what is remembered is handed out again as it is.
    request, routed = routing.route("GET", "/p/2999", None)
    assert routing.route("GET", "/p/2999", None) == (request, routed)


TAGS = (("Fly-Primary-Instance", "p1"), ("Fly-Instance", "me"))


@pytest.mark.parametrize(
    ("app_headers", "expected"),
    [
        pytest.param([("Content-Type", "text/plain")], [("Content-Type", "text/plain"), *TAGS], id="none-of-ours"),
        pytest.param([], list(TAGS), id="no-headers"),
        pytest.param(
            [("fly-instance", "stale"), ("Content-Type", "text/plain"), ("FLY-PRIMARY-INSTANCE", "old")],
            [("Content-Type", "text/plain"), *TAGS],
            id="the-app's-copies-in-any-case-dropped",
        ),
        pytest.param(
            [("Fly-Primary-Region", "ord"), ("Vary", "Cookie")], [("Vary", "Cookie"), *TAGS], id="the-region-tag-too"
        ),
    ],
)
def test_a_response_carries_our_tags_once_whatever_the_app_set(
    app_headers: list[tuple[str, str]], expected: list[tuple[str, str]]
) -> None:
    """Each case twice (the second time the app's other names are known), as str (WSGI) and as bytes (ASGI)."""
    before = list(app_headers)
    for _ in range(2):
        assert OUR_TAGS.tag(app_headers, TAGS) == expected
        raw_tags = [(n.lower().encode(), v.encode()) for n, v in TAGS]
        raw = iter([(n.lower().encode(), v.encode()) for n, v in app_headers])  # ASGI: any iterable
        assert OUR_TAGS_BYTES.tag(raw, raw_tags) == [(n.lower().encode(), v.encode()) for n, v in expected]
    assert app_headers == before  # the app's own list is left as it was
