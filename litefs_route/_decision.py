"""Every routing rule, in one pure module: no I/O, no clock, no framework.

Every adapter routes through this module, so none can disagree, and every
rule is tested in one table (``tests/test_decision.py``). It is sans-IO in
h11's sense: :func:`decide` answers from what it is given, and where an
answer needs I/O it says so (a :class:`~litefs_route._verdicts.Pending`)
instead of doing it. The plans (:mod:`litefs_route._plans`) fetch what it
needs through the typed protocol of :mod:`litefs_route._needs`, and
:mod:`litefs_route._drivers` runs them, blocking (WSGI) or off the event
loop (ASGI). The module's neighbours each hold one job: what a request is
(:mod:`~litefs_route._request`), the options the rules read
(:mod:`~litefs_route._rules`), path globs (:mod:`~litefs_route._globs`),
and the answers with their counter names (:mod:`~litefs_route._verdicts`).

The rules, in order:

0. A request with both ``Content-Length`` and ``Transfer-Encoding`` is
   refused with 400 before anything else, whatever its method and the
   node's role: where its body ends is ambiguous (RFC 9112 §6.3 calls it a
   likely request-smuggling attempt), so it is neither run, measured,
   replayed nor forwarded.
1. A ``passthrough`` path runs locally, whatever the method, and never
   waits for read-your-writes nor gets a ``__txid`` cookie.
2. GET, HEAD, OPTIONS and TRACE are reads and run locally, unless a GET or
   HEAD path matches ``write_on_read``. Every other method is a write
   (methods are case-sensitive: ``get`` is not ``GET``). A read that
   litefs-route replayed to the primary is measured there as a write: the
   safety net replays reads whose handler wrote (rule 8), and their
   ``__txid`` cookies must name what they changed.
3. A write runs locally on the primary (and standalone).
4. On a node that knows no primary, a write waits up to ``primary_wait``
   for one, reading the mount afresh, and is decided again; still none: 503.
   If the configured mount directory does not exist, it is a
   misconfiguration, not an election: 503 at once, saying so.
5. On a replica, a write is replayed to the primary, unless the request has
   already been replayed ``max_replays`` times by litefs-route (503: the
   nodes disagree about who is primary), or its body is larger than Fly's
   proxy can replay (413). A body of unknown length is measured first (408
   if it does not arrive within ``body_timeout``).
6. Read-your-writes, when on: a read whose TXID cookies (one per database)
   are ahead of the replica's TXIDs waits up to ``consistency_wait`` for all
   of them, then runs; not caught up, it is replayed to the primary (within
   ``max_replays``; past it, or with no primary, it runs here rather than
   fail). The primary never waits; a cookie ahead of it (lost writes after a
   failover) is cleared.
7. ``ensure_primary()``: the request is a write whatever its method and
   path, and its body is not measured (the app may have read it).
8. A request whose app ran here but that must end on the primary
   (``ensure_primary()`` with no primary known, or SQLite failing its write
   because of LiteFS) is *settled* on a fresh reading of the mount. A write
   that may have run (an I/O error, unless this node was routed as a replica
   and its LiteFS is still running and not the primary; see
   :mod:`litefs_route._sqlite_errors`) ends in 502 with its outcome unknown,
   never replayed. Any other waits for a primary as rule 4 and is replayed,
   or refused with 503; it is never run again here.
9. ``ensure_instance(id)``: the request runs on that instance and is
   replayed to it from any other, within ``max_replays`` (past it: 503, the
   instance may be gone) and Fly's body limit (413), as rule 5.
10. The health check (``health_path``, opt-in; a GET): answered by the
    middleware from ``.lag`` read now, as LiteFS's proxy answers
    ``/litefs/health``: 200 while the replication lag is at most ``max_lag``
    (always on the primary, and standalone), else 503.
"""

from __future__ import annotations

from ._mount import NodeState, Role
from ._request import RequestInfo, replay_hops
from ._rules import Rules
from ._secret import Secret
from ._sqlite_errors import WriteFailureKind
from ._verdicts import (
    BAD_FRAMING,
    DISAGREE_REASON,
    FORBIDDEN,
    FORWARD_LOOP_REASON,
    HEALTHY,
    LAGGING_REASON,
    MAY_HAVE_RUN_REASON,
    MISCONFIGURED_REASON,
    NO_PRIMARY,
    RAN_HERE_REASON,
    REFUSED_HERE_REASON,
    RUN_PASSTHROUGH,
    RUN_PASSTHROUGH_WRITE,
    RUN_READ,
    RUN_WRITE,
    Decision,
    Kind,
    Outcome,
    Pending,
    assert_never,
    replay_failure,
)

__all__ = [
    "READ_METHODS",
    "awaits_primary",
    "body_timed_out",
    "decide",
    "decide_instance",
    "decide_lagging_read",
    "decide_without_io",
    "health",
    "needs_fresh_state",
    "outstanding_txids",
    "run_read",
    "sets_txid_cookie",
    "settle",
    "settle_failure",
]

#: Methods that run on a replica. LiteFS's own proxy replays OPTIONS too;
#: we keep it local so that CORS preflights are answered where they land.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_WRITE_ON_READ_METHODS = frozenset({"GET", "HEAD"})


def decide(
    request: RequestInfo,
    state: NodeState,
    rules: Rules,
    *,
    known_txids: tuple[int | None, ...] | None = None,
    forced: bool = False,
    body_size: int | None = None,
) -> Decision | Pending:
    """Rules 1-7 for *request* on a node in *state*: an answer, or what is needed first.

    *known_txids*: each database's highest local TXID already seen (no I/O;
    a read whose cookies are not above them needs no wait). *forced*: the handler called
    ``ensure_primary()``. *body_size*: the size measured after ``MEASURE_BODY``.
    """
    method = request.method
    if request.ambiguous_length:
        return BAD_FRAMING
    if request.forward_claim is not None and not forced:
        return _decide_forwarded(request, state, rules)
    if request.path == rules.health_path and method == "GET" and not forced:
        return Pending.CHECK_HEALTH
    if not forced:
        if request.websocket:
            # A socket on a write_sockets path must be held by the primary (Fly
            # replays the handshake); any other runs here untouched.
            if not rules.write_sockets.match(request.path):
                return RUN_READ
        elif method in READ_METHODS and not (
            method in _WRITE_ON_READ_METHODS and rules.write_on_read.match(request.path)
        ):
            # Most reads carry no TXID and were not replayed: then passthrough
            # cannot matter (both run here) and its globs are not matched at all.
            if request.txids is not None:
                return _decide_read(request, state, rules, known_txids)
            return RUN_READ if request.replay_src is None else run_read(request, state, rules)
        if rules.passthrough.match(request.path):
            return RUN_PASSTHROUGH
    if state.is_primary:
        if forced and rules.passthrough.match(request.path):
            return RUN_PASSTHROUGH_WRITE
        return RUN_WRITE
    if state.mount_missing:
        return _misconfigured(state)
    if state.role is Role.NO_PRIMARY or state.primary_id is None:
        return Pending.WAIT_FOR_PRIMARY
    hops = replay_hops(request.replay_src)
    if hops >= rules.max_replays:
        return Decision(Kind.UNAVAILABLE, True, reason=DISAGREE_REASON.format(hops))
    # Forward mode sends a write to the primary before its handler runs (never
    # after: the handler may have read the body, and the request may have written).
    # It forwards what Fly cannot replay (too large), or could not deliver (sent back), or every write ("always").
    limit = rules.replay_body_limit
    size = request.content_length if request.content_length is not None else body_size
    too_large = size is not None and size > limit
    if (
        rules.forward != "off"
        and not state.primary_is_region  # forward mode needs an instance's address: a region is replayed to
        and not forced
        and not request.websocket  # a socket is never forwarded
        and (rules.forward == "always" or too_large or request.replay_failed is not None)
    ):
        return Decision(Kind.FORWARD, True, target=state.primary_id, hops=1)
    if too_large:
        reason = f"the body is larger than {limit} bytes"
        return Decision(Kind.TOO_LARGE, True, target=state.primary_id, reason=reason, by_region=state.primary_is_region)
    if size is None and request.unknown_length and not forced:
        return Pending.MEASURE_BODY
    return _replay(request, True, state.primary_id, hops + 1, by_region=state.primary_is_region)


def _decide_forwarded(request: RequestInfo, state: NodeState, rules: Rules) -> Decision | Pending:
    """A request that claims another instance forwarded it: run only with the secret, only on the primary."""
    if not _genuine(request.forward_claim, rules):
        return FORBIDDEN
    if state.is_primary:
        return RUN_WRITE
    if state.mount_missing:
        return _misconfigured(state)
    if state.role is Role.NO_PRIMARY or state.primary_id is None:
        return Pending.WAIT_FOR_PRIMARY
    hops = request.forward_hops
    if rules.forward == "off" or hops >= rules.max_replays or request.websocket or state.primary_is_region:
        return Decision(Kind.UNAVAILABLE, True, reason=FORWARD_LOOP_REASON.format(hops))
    return Decision(Kind.FORWARD, True, target=state.primary_id, hops=hops + 1)


def _misconfigured(state: NodeState) -> Decision:
    """Rule 4 when the mount directory does not exist: a misconfiguration, refused at once (503), saying so."""
    return Decision(Kind.UNAVAILABLE, True, reason=MISCONFIGURED_REASON.format(state.detail))


def awaits_primary(state: NodeState) -> bool:
    """Rule 4: True while a write in *state* waits for a primary (none known, and no missing mount to blame)."""
    return state.role is Role.NO_PRIMARY and not state.mount_missing


def _genuine(claim: Secret | None, rules: Rules) -> bool:
    """True if *claim* is this cluster's forward secret (compared in constant time)."""
    secret = rules.forward_secret
    return secret is not None and secret.matches(claim)


def _replay(
    request: RequestInfo, write: bool, target: str, hops: int, reason: str = "", *, by_region: bool = False
) -> Decision:
    """The replay to *target* (an instance, or a region *by_region*); or, for a request Fly's proxy sent back, a 503.

    Fly forbids a request sent back (``fly-replay-failed``) from replaying
    again, and a write must not run on a replica: refused, and retried by
    the client later.
    """
    if request.replay_failed is None:
        return Decision(Kind.REPLAY, write, target=target, hops=hops, reason=reason, by_region=by_region)
    reason = replay_failure(request.replay_failed, target if by_region else None)
    return Decision(Kind.UNAVAILABLE, write, target=target, reason=reason)


def health(state: NodeState, rules: Rules) -> Decision:
    """Rule 10: the health check's answer on a node in *state* (read from the mount)."""
    if state.is_primary:
        return HEALTHY
    if state.mount_missing:
        return Decision(Kind.UNHEALTHY, False, reason=MISCONFIGURED_REASON.format(state.detail))
    lag_ms = state.lag_ms
    if lag_ms is None or lag_ms < 0:
        return Decision(Kind.UNHEALTHY, False, reason=f"replication lag unknown ({state.detail})")
    if rules.max_lag > 0 and lag_ms > rules.max_lag * 1000:
        return Decision(Kind.UNHEALTHY, False, reason=f"replication lag {lag_ms} ms exceeds {rules.max_lag:g} s")
    return HEALTHY


def decide_instance(request: RequestInfo, state: NodeState, rules: Rules, instance_id: str) -> Decision | None:
    """Rule 9: None if this is *instance_id* (the request goes on), else how it ends."""
    if instance_id == state.instance_id:
        return None
    hops = replay_hops(request.replay_src)
    if hops >= rules.max_replays:
        reason = f"replayed {hops} times without reaching instance {instance_id} (is it running?)"
        return Decision(Kind.UNAVAILABLE, False, reason=reason)
    limit = rules.replay_body_limit
    if request.content_length is not None and request.content_length > limit:
        return Decision(Kind.TOO_LARGE, False, target=instance_id, reason=f"the body is larger than {limit} bytes")
    return _replay(request, False, instance_id, hops + 1)


def _decide_read(
    request: RequestInfo, state: NodeState, rules: Rules, known_txids: tuple[int | None, ...] | None
) -> Decision | Pending:
    """Rules 1 and 6 for a read with TXID cookies."""
    txids = request.txids
    if txids is None or not rules.read_your_writes or (known_txids is not None and _reached(txids, known_txids)):
        return run_read(request, state, rules)
    if rules.passthrough.match(request.path):
        return RUN_PASSTHROUGH
    if state.role is Role.REPLICA:
        return Pending.WAIT_FOR_TXID
    if state.role is Role.PRIMARY:
        return Pending.CHECK_TXID
    return RUN_READ


def run_read(request: RequestInfo, state: NodeState, rules: Rules) -> Decision:
    """Rule 2's read, run here: measured as a write on the primary if litefs-route replayed it there."""
    # The safety net replays a read whose handler wrote on a replica (SQLite refused
    # it there): measured as a write, its cookies name what it changed here, so the
    # client's next read, on any replica, waits for that change.
    if request.replay_src is None or state.role is not Role.PRIMARY or not replay_hops(request.replay_src):
        return RUN_READ
    return RUN_PASSTHROUGH if rules.passthrough.match(request.path) else RUN_WRITE


def _reached(txids: tuple[int, ...], known: tuple[int | None, ...]) -> bool:
    """True if every database is known to have reached its TXID (0: no cookie for it)."""
    return all(not txid or (seen is not None and seen >= txid) for txid, seen in zip(txids, known, strict=True))


def outstanding_txids(txids: tuple[int, ...], local: tuple[int | None, ...]) -> tuple[int, ...]:
    """The databases (indexes) whose cookie is ahead of this node's TXID (or whose TXID is unknown)."""
    return tuple(
        i for i, (txid, seen) in enumerate(zip(txids, local, strict=True)) if txid and (seen is None or txid > seen)
    )


def decide_lagging_read(request: RequestInfo, state: NodeState, rules: Rules) -> Decision:
    """Rule 6: a replica read whose TXID did not arrive in time."""
    hops = replay_hops(request.replay_src)
    if state.role is not Role.REPLICA or state.primary_id is None or hops >= rules.max_replays:
        return RUN_READ
    if request.replay_failed is not None:  # the primary is out of reach: the best this node has
        return RUN_READ
    return Decision(
        Kind.REPLAY,
        False,
        target=state.primary_id,
        hops=hops + 1,
        reason=LAGGING_REASON,
        by_region=state.primary_is_region,
    )


def sets_txid_cookie(decision: Decision, state: NodeState, rules: Rules) -> bool:
    """True if a request run on *decision* gets fresh TXID cookies (positions read after its handler)."""
    return decision.write and rules.read_your_writes and not decision.passthrough and state.role is Role.PRIMARY


def decide_without_io(
    request: RequestInfo, cached: NodeState | None, rules: Rules, *, known_txids: tuple[int | None, ...] | None = None
) -> Outcome | None:
    """:func:`plan_request`'s outcome when it needs no I/O, from a *cached* reading; else None.

    The common case (a fresh cached reading, a request that is not a replay,
    an answer that needs nothing more) without the cost of a generator: the
    plan's own first step, so the two agree (``tests/test_properties.py``).
    """
    if cached is None or needs_fresh_state(request, rules):
        return None
    step = decide(request, cached, rules, known_txids=known_txids)
    return Outcome(step, cached) if type(step) is Decision else None


def needs_fresh_state(request: RequestInfo, rules: Rules) -> bool:
    # A replayed request was sent here because another node believes this
    # one is primary: decide on the truth, not on a cached reading, so a node
    # that was just promoted keeps the write instead of bouncing it.
    # A request Fly's proxy sent back found its target unreachable, and one
    # forwarded here was sent by a node that believes this one is primary: the same.
    # (A forged claim costs no read: it is refused on any state.)
    if request.replay_src is not None or request.replay_failed is not None:
        return True
    return request.forward_claim is not None and _genuine(request.forward_claim, rules)


def body_timed_out(rules: Rules) -> Decision:
    """Rule 5: a body of unknown length that did not arrive within ``body_timeout`` to be measured (408)."""
    return Decision(Kind.TIMEOUT, True, reason=f"its body did not arrive within {rules.body_timeout:g} s")


def settle_failure(state: NodeState, failure: WriteFailureKind | None, *, routed_as_primary: bool) -> Decision | None:
    """Rule 8 for a write SQLite failed: 502, outcome unknown, if it may have run; None if it provably did not.

    *state* is the mount read right after the failure; *routed_as_primary*:
    the reading the request was routed on said this node is the primary.
    """
    if failure is WriteFailureKind.IO_ERROR and not _refused_by_litefs(state, routed_as_primary):
        return Decision(Kind.OUTCOME_UNKNOWN, True, reason=MAY_HAVE_RUN_REASON.format(state.instance_id))
    return None


def settle(request: RequestInfo, state: NodeState, rules: Rules, failure: WriteFailureKind | None) -> Decision:
    """Rule 8 once a primary was waited for: the replay, or a refusal; never RUN (the app already ran here).

    *failure*: how SQLite failed the request's write (None: ``ensure_primary()`` ended it).
    """
    step = decide(request, state, rules, forced=True)
    match step:
        case Decision(kind=Kind.RUN):
            return Decision(Kind.UNAVAILABLE, True, reason=RAN_HERE_REASON if failure is None else REFUSED_HERE_REASON)
        case Decision():
            return step
        case Pending.WAIT_FOR_PRIMARY:
            return NO_PRIMARY
        case Pending.MEASURE_BODY | Pending.WAIT_FOR_TXID | Pending.CHECK_TXID | Pending.CHECK_HEALTH:
            # forced: the body is never measured, and a forced request is no read
            raise AssertionError(f"a forced decision cannot be {step}")
        case _:
            assert_never(step)


def _refused_by_litefs(state: NodeState, routed_as_primary: bool) -> bool:
    """True if an I/O error proves the write did not run: LiteFS refused it on a replica.

    LiteFS checks that this node may write before it applies anything
    (``db.Writeable()`` in ``WriteJournalAt``, ``WriteDatabaseAt``,
    ``CommitJournal``, ``WriteWALAt``) and answers EACCES, which SQLite
    reports as ``SQLITE_IOERR_*``: a WAL-mode replica's refusal. A node
    routed as a replica cannot have committed; *state*, the mount read right
    after the failure, shows it still cannot (LiteFS running, not the
    primary). On a node routed as the primary the same error may follow a
    commit: a LiteFS being stopped fails calls after it (its mount answers
    a moment longer), and a killed one leaves a dead mount.
    """
    return not routed_as_primary and not state.is_primary and state.mount_error is None and state.litefs_seen
