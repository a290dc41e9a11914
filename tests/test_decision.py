"""The routing decision, one row per rule (both adapters call this function)."""

from __future__ import annotations

from typing import Any

import pytest

from litefs_route._decision import decide, decide_lagging_read
from litefs_route._drivers import drive
from litefs_route._globs import PathGlobs
from litefs_route._mount import NodeState, Role
from litefs_route._plans import plan_request, plan_settlement
from litefs_route._replies import build_reply, build_tags
from litefs_route._request import RequestInfo, replay_hops
from litefs_route._verdicts import Decision, Kind, Pending, counter_name
from tests.plans import FixedIO, routing_for, rules

ME, P = "me0000000000aa", "pp0000000000bb"
PRIMARY = NodeState(Role.PRIMARY, ME, ME)
STANDALONE = NodeState(Role.STANDALONE, ME, ME)
REPLICA = NodeState(Role.REPLICA, ME, P)
NO_PRIMARY = NodeState(Role.NO_PRIMARY, ME, None)
# The mount directory does not exist at all (read_node_state's reading of a typo in LITEFS_DIR).
MISSING = NodeState(
    Role.NO_PRIMARY,
    ME,
    None,
    detail="the LiteFS directory /nope does not exist",
    mount_error="ENOENT",
    mount_missing=True,
)
MISCONFIGURED = Decision(
    Kind.UNAVAILABLE, True, reason="the LiteFS directory /nope does not exist: litefs-route is misconfigured"
)
RULES = rules(write_on_read=["/auth/callback/*", "/session/refresh"], passthrough=["/static/*", "/healthz"])
RUN_READ = Decision(Kind.RUN, write=False)
RUN_WRITE = Decision(Kind.RUN, write=True)
RUN_PASSTHROUGH = Decision(Kind.RUN, write=False, passthrough=True)  # runs here as a read, never gets a cookie


def replay(hops: int = 1) -> Decision:
    return Decision(Kind.REPLAY, True, target=P, hops=hops)


FAILED = "instance=pp0000000000bb;app=a;region=ams;replay_source=me0000000000aa;reason=timeout;elapsed_ms=5001"
SENT_BACK_503 = Decision(
    Kind.UNAVAILABLE,
    True,
    target=P,
    reason=f"the replay to instance {P} failed (timeout), and a request sent back may not be replayed again",
)


HOP_1 = "instance=x;state=litefs-route-hop-1"


def req(method: str = "GET", path: str = "/", **kw: object) -> RequestInfo:
    return RequestInfo(method, path, **kw)  # type: ignore[arg-type]


CASES = [
    # (id, request, state, expected kind / decision)
    ("primary-get", req(), PRIMARY, RUN_READ),
    ("primary-post", req("POST"), PRIMARY, RUN_WRITE),
    ("standalone-post", req("POST"), STANDALONE, RUN_WRITE),
    ("replica-get", req(), REPLICA, RUN_READ),
    ("replica-head", req("HEAD"), REPLICA, RUN_READ),
    ("replica-options", req("OPTIONS"), REPLICA, RUN_READ),
    ("replica-trace", req("TRACE"), REPLICA, RUN_READ),
    ("replica-post", req("POST"), REPLICA, replay()),
    ("replica-put", req("PUT"), REPLICA, replay()),
    ("replica-patch", req("PATCH"), REPLICA, replay()),
    ("replica-delete", req("DELETE"), REPLICA, replay()),
    ("replica-odd-method", req("PURGE"), REPLICA, replay()),
    ("replica-lowercase-get-is-not-GET", req("get"), REPLICA, replay()),
    ("replica-write-on-read-glob", req("GET", "/auth/callback/github"), REPLICA, replay()),
    ("replica-write-on-read-glob-nested", req("GET", "/auth/callback/a/b"), REPLICA, replay()),
    ("replica-write-on-read-exact", req("HEAD", "/session/refresh"), REPLICA, replay()),
    ("replica-write-on-read-anchored-end", req("GET", "/session/refresh/x"), REPLICA, RUN_READ),
    ("replica-write-on-read-anchored-start", req("GET", "/x/auth/callback/y"), REPLICA, RUN_READ),
    ("replica-write-on-read-options-stays-local", req("OPTIONS", "/session/refresh"), REPLICA, RUN_READ),
    ("replica-passthrough-post", req("POST", "/static/app.css"), REPLICA, RUN_PASSTHROUGH),
    ("replica-passthrough-exact", req("DELETE", "/healthz"), REPLICA, RUN_PASSTHROUGH),
    ("replica-passthrough-dotdot-matches-literally", req("POST", "/static/../admin"), REPLICA, RUN_PASSTHROUGH),
    ("no-primary-get", req(), NO_PRIMARY, RUN_READ),
    ("no-primary-post-waits", req("POST"), NO_PRIMARY, Pending.WAIT_FOR_PRIMARY),
    # A missing mount directory is a misconfiguration, not an election: refused at once, saying so.
    ("missing-mount-get", req(), MISSING, RUN_READ),
    ("missing-mount-post-refused-at-once", req("POST"), MISSING, MISCONFIGURED),
    ("replica-replayed-once", req("POST", replay_src="instance=x;state=litefs-route-hop-1"), REPLICA, replay(2)),
    ("replica-replayed-twice", req("POST", replay_src="instance=x;state=litefs-route-hop-2"), REPLICA, replay(3)),
    ("replica-foreign-state-counts-zero", req("POST", replay_src="instance=x;state=other"), REPLICA, replay(1)),
    ("replica-body-at-limit", req("POST", content_length=1_000_000), REPLICA, replay()),
    ("replica-chunked-body-measured", req("POST", unknown_length=True), REPLICA, Pending.MEASURE_BODY),
    ("primary-huge-body-runs", req("POST", content_length=10**9), PRIMARY, RUN_WRITE),
    # Fly's proxy could not deliver our replay and sent the request back: never replayed again.
    ("sent-back-write-on-replica-is-503", req("POST", replay_failed=FAILED), REPLICA, SENT_BACK_503),
    ("sent-back-write-on-new-primary-runs", req("POST", replay_failed=FAILED), PRIMARY, RUN_WRITE),
    ("sent-back-write-no-primary-waits", req("POST", replay_failed=FAILED), NO_PRIMARY, Pending.WAIT_FOR_PRIMARY),
    ("sent-back-read-runs", req("GET", replay_failed=FAILED), REPLICA, RUN_READ),
    # A read we replayed (the safety net's, or a lagging one) is measured as a write on the
    # primary, so a write hidden in it gets its cookie; elsewhere, and replayed by others, a read.
    ("replayed-read-on-primary-is-measured", req("GET", replay_src=HOP_1), PRIMARY, RUN_WRITE),
    ("replayed-head-on-primary-is-measured", req("HEAD", replay_src=HOP_1), PRIMARY, RUN_WRITE),
    ("replayed-read-passthrough-on-primary", req("GET", "/healthz", replay_src=HOP_1), PRIMARY, RUN_PASSTHROUGH),
    ("replayed-read-on-replica-is-a-read", req("GET", replay_src=HOP_1), REPLICA, RUN_READ),
    ("replayed-read-standalone-is-a-read", req("GET", replay_src=HOP_1), STANDALONE, RUN_READ),
    ("foreign-replayed-read-on-primary", req("GET", replay_src="instance=x;state=other"), PRIMARY, RUN_READ),
    ("replayed-read-with-cookie-ryw-off", req("GET", replay_src=HOP_1, txids=(1,)), PRIMARY, RUN_WRITE),
]


@pytest.mark.parametrize(("request_", "state", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(request_: RequestInfo, state: NodeState, expected: Decision | Pending) -> None:
    assert decide(request_, state, RULES) == expected


REFUSALS = [
    ("replay-limit", req("POST", replay_src="instance=x;state=litefs-route-hop-3"), REPLICA, {}, Kind.UNAVAILABLE),
    ("no-primary-after-wait", req("POST"), NO_PRIMARY, {"plan": plan_request}, Kind.UNAVAILABLE),
    ("body-over-limit", req("POST", content_length=1_000_001), REPLICA, {}, Kind.TOO_LARGE),
    ("measured-body-over-limit", req("POST", unknown_length=True), REPLICA, {"body_size": 1_000_001}, Kind.TOO_LARGE),
    ("measured-body-fits", req("POST", unknown_length=True), REPLICA, {"body_size": 10}, Kind.REPLAY),
    ("ensure-primary-on-replica", req("GET"), REPLICA, {"forced": True}, Kind.REPLAY),
    ("ensure-primary-passthrough-path", req("GET", "/healthz"), REPLICA, {"forced": True}, Kind.REPLAY),
    # ensure_primary() with no primary known waits for one, like any write (then: settled, rule 8).
    ("ensure-primary-no-primary", req("GET"), NO_PRIMARY, {"forced": True}, Pending.WAIT_FOR_PRIMARY),
    ("ensure-primary-no-primary-after-waiting", req("GET"), NO_PRIMARY, {"plan": plan_settlement}, Kind.UNAVAILABLE),
    ("ensure-primary-on-primary", req("GET"), PRIMARY, {"forced": True}, Kind.RUN),
]


@pytest.mark.parametrize(
    ("request_", "state", "kwargs", "kind"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS]
)
def test_decide_refusals(
    request_: RequestInfo, state: NodeState, kwargs: dict[str, object], kind: Kind | Pending
) -> None:
    if "plan" in kwargs:  # the whole plan, past its wait for a primary
        decision: Decision | Pending = drive(kwargs["plan"](request_, RULES), FixedIO(state)).decision  # type: ignore[operator]
    else:
        decision = decide(request_, state, RULES, **kwargs)  # type: ignore[arg-type]
    if isinstance(kind, Pending):
        assert decision is kind
        return
    assert isinstance(decision, Decision)
    assert decision.kind is kind
    assert decision.write


@pytest.mark.parametrize(
    ("request_", "plan"),
    [
        (req("POST"), plan_request),
        (req("GET"), plan_settlement),
        (req("POST", replay_src="instance=x;state=litefs-route-hop-1"), plan_request),
    ],
    ids=["write", "ensure-primary", "replayed-here"],
)
def test_a_missing_mount_is_refused_without_waiting_for_a_primary(request_: RequestInfo, plan: Any) -> None:
    io = FixedIO(MISSING)
    outcome = drive(plan(request_, RULES), io)
    assert (outcome.decision, io.sleeps) == (MISCONFIGURED, 0)
    assert counter_name(outcome.decision) == "unavailable_misconfigured"
    assert (
        counter_name(drive(plan_request(req("POST"), RULES), FixedIO(NO_PRIMARY)).decision) == "unavailable_no_primary"
    )


@pytest.mark.parametrize(
    ("header", "hops"),
    [
        (None, 0),
        ("", 0),
        ("instance=abc;region=ams;t=123;state=litefs-route-hop-2", 2),
        ("state=litefs-route-hop-7", 7),
        ("instance=abc;state=litefs-route-hop-2x", 0),
        ("instance=abc;state=litefs-route-hop-", 0),
        ("instance=abc;state=litefs-route-hop-1234", 0),
        ("instance=abc;xstate=litefs-route-hop-5", 0),
        ("state=litefs-route-hop-2;" + "x" * 2000, 0),
    ],
    ids=[
        "absent",
        "empty",
        "fly-format",
        "alone",
        "trailing-junk",
        "no-number",
        "too-long-number",
        "other-field",
        "huge",
    ],
)
def test_replay_hops(header: str | None, hops: int) -> None:
    assert replay_hops(header) == hops


@pytest.mark.parametrize(
    ("method", "path", "content_length", "transfer_encoding", "expected_length", "unknown"),
    [
        ("POST", "/", "12", None, 12, False),
        ("POST", "/", "-1", None, None, False),
        ("POST", "/", "1e3", None, None, False),
        ("POST", "/", "١٢", None, None, False),  # Arabic-Indic digits: str.isdigit() would say yes
        ("POST", "/", None, "chunked", None, True),
        ("POST", "/", None, "gzip, Chunked", None, True),
        ("POST", "/", "5", "chunked", 5, False),
    ],
    ids=["plain", "negative", "float", "unicode-digits", "chunked", "chunked-last", "both"],
)
def test_request_info_from_headers(
    method: str,
    path: str,
    content_length: str | None,
    transfer_encoding: str | None,
    expected_length: int | None,
    unknown: bool,
) -> None:
    info = RequestInfo.from_headers(
        method, path, replay_src=None, content_length=content_length, transfer_encoding=transfer_encoding
    )
    assert (info.content_length, info.unknown_length) == (expected_length, unknown)


def test_globs_reject_relative_patterns() -> None:
    with pytest.raises(ValueError, match="path glob"):
        PathGlobs(["static/*"])


def test_globs_escape_regex_metacharacters() -> None:
    globs = PathGlobs(["/a.b/(x)+"])
    assert globs.match("/a.b/(x)+")
    assert not globs.match("/aXb/(x)+")
    assert not globs.match("/a.b/xx")


@pytest.mark.parametrize("max_replays", [0, 10, 1000])
def test_max_replays_must_end_before_flys_limit(max_replays: int) -> None:
    with pytest.raises(ValueError, match="max_replays"):
        routing_for(instance_id=ME, max_replays=max_replays)


@pytest.mark.parametrize(
    ("answers", "needs"),
    [
        ([None], "ReadState"),  # a driver that answers ReadState with nothing
        ([NO_PRIMARY, "soon"], "ReadClock"),
        ([REPLICA, 10], "WaitForTxids"),  # an int where a bool is due
    ],
    ids=["state-none", "clock-text", "txid-int"],
)
def test_a_driver_that_answers_wrongly_fails_loudly(answers: list[object], needs: str) -> None:
    """The plan checks what it is sent back: a driver bug is a TypeError, never a wrong decision."""
    request = RequestInfo("GET", "/", txids=(7,)) if needs == "WaitForTxids" else req("POST")
    plan = plan_request(request, rules(database="app.db", litefs_dir="/x"))
    plan.send(None)  # the first need: ReadState
    *good, bad = answers
    for answer in good:
        plan.send(answer)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=needs):
        plan.send(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("replay_src", "expected"),
    [(None, RUN_READ), (HOP_1, RUN_WRITE)],
    ids=["read-on-primary", "replayed-read-on-primary"],
)
def test_a_cookie_ahead_of_the_primary_is_cleared_and_a_replayed_read_still_measured(
    replay_src: str | None, expected: Decision
) -> None:
    """Rule 6 on the primary (the cookie names TXID 7, the primary has 5), with rule 2's replayed read."""
    request = RequestInfo("GET", "/", replay_src=replay_src, txids=(7,))
    read_your_writes = rules(database="app.db", litefs_dir="/x")
    assert decide(request, PRIMARY, read_your_writes) is Pending.CHECK_TXID
    outcome = drive(plan_request(request, read_your_writes), FixedIO(PRIMARY, positions=(5,)))
    assert (outcome.decision, outcome.clear_txids) == (expected, (0,))


# A source that routes by region (Postgres): the same rules, the primary named by its region.
REGION = "ord"
REGION_REPLICA = NodeState(Role.REPLICA, ME, REGION, primary_is_region=True)
REGION_PRIMARY = NodeState(Role.PRIMARY, ME, REGION, primary_is_region=True)
FORWARD_ALWAYS = rules(forward="always", forward_secret="s" * 16, forward_url="http://{instance}:8080")
TO_REGION = Decision(Kind.REPLAY, True, REGION, 1, by_region=True)
REGION_SENT_BACK = "the replay to region ord failed (no_candidate), and a request sent back may not be replayed again"

REGION_CASES = [
    # (id, request, state, rules, expected)
    ("region-replica-get-runs", req(), REGION_REPLICA, RULES, RUN_READ),
    ("region-replica-post-replayed-to-region", req("POST"), REGION_REPLICA, RULES, TO_REGION),
    ("region-primary-post-runs", req("POST"), REGION_PRIMARY, RULES, RUN_WRITE),
    ("region-replica-body-over-limit", req("POST", content_length=1_000_001), REGION_REPLICA, RULES,
     Decision(Kind.TOO_LARGE, True, REGION, reason="the body is larger than 1000000 bytes", by_region=True)),
    # Forward mode needs an instance's address: a region is replayed to, never forwarded to.
    ("region-replica-forward-always-still-replays", req("POST"), REGION_REPLICA, FORWARD_ALWAYS, TO_REGION),
    # Sent back: the 503 names the region the replay was for (Fly's header names no instance when it found none).
    ("region-sent-back-write-is-503-naming-the-region",
     req("POST", replay_failed="instance=;app=a;region=lhr;replay_source=me;reason=no_candidate;elapsed_ms=0"),
     REGION_REPLICA, RULES,
     Decision(Kind.UNAVAILABLE, True, REGION, reason=REGION_SENT_BACK)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "state", "rules_", "expected"), [c[1:] for c in REGION_CASES], ids=[c[0] for c in REGION_CASES]
)
def test_decide_by_region(request_: RequestInfo, state: NodeState, rules_: Any, expected: Decision) -> None:
    assert decide(request_, state, rules_) == expected


def test_a_region_is_replayed_to_and_tagged_by_its_own_fields() -> None:
    """``fly-replay: region=`` for a region; ``Fly-Primary-Region`` instead of ``Fly-Primary-Instance``."""
    reply = build_reply(Decision(Kind.REPLAY, True, REGION, 1, by_region=True), retry_after=2)
    assert ("fly-replay", "region=ord;state=litefs-route-hop-1") in reply.headers
    assert b"must run in region ord" in reply.body
    assert build_tags(REGION_REPLICA) == (("Fly-Primary-Region", "ord"), ("Fly-Instance", ME))
    assert build_tags(REPLICA) == (("Fly-Primary-Instance", P), ("Fly-Instance", ME))
    lagging = decide_lagging_read(req(txids=(5,)), REGION_REPLICA, rules(database="app.db"))
    assert (lagging.kind, lagging.target, lagging.by_region) == (Kind.REPLAY, REGION, True)
