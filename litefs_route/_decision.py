"""Every routing rule, in one pure module: no I/O, no clock, no framework.

Both middlewares route through this module, so they cannot disagree, and
every rule is tested in one table (``tests/test_decision.py``). It is
sans-IO in h11's sense: :func:`decide` answers from what it is given, and
where an answer needs I/O it says so (a :class:`Pending`) instead of doing
it. The plans (:func:`plan_request`, :func:`plan_settlement`) are
generators that yield the I/O they need (a :data:`Need`) and are sent back
the result; :mod:`litefs_route._drivers` runs them, blocking (WSGI) or off
the event loop (ASGI). Final answers (a :class:`Decision`) and requests for
I/O are different types, so one can never be taken for the other.

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
   (methods are case-sensitive: ``get`` is not ``GET``).
3. A write runs locally on the primary (and standalone).
4. On a node that knows no primary, a write waits up to ``primary_wait``
   for one, reading the mount afresh, and is decided again; still none: 503.
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

import enum
import operator
import re
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

from ._consistency import TxidCookies
from ._mount import NodeState, Role
from ._secret import Secret
from ._sqlite_errors import WriteFailureKind

__all__ = [
    "NO_PRIMARY",
    "NO_PRIMARY_REASON",
    "READ_METHODS",
    "Answer",
    "AwaitChange",
    "Decision",
    "Kind",
    "MeasureBody",
    "Need",
    "Outcome",
    "PathGlobs",
    "Pending",
    "Plan",
    "ReadClock",
    "ReadMount",
    "ReadPositions",
    "ReadState",
    "RequestInfo",
    "Rules",
    "WaitForTxids",
    "assert_never",
    "counter_name",
    "decide",
    "decide_instance",
    "decide_without_io",
    "health",
    "plan_request",
    "plan_settlement",
    "replay_failure",
    "replay_hops",
    "replay_state",
    "sets_txid_cookie",
]

#: Methods that run on a replica. LiteFS's own proxy replays OPTIONS too;
#: we keep it local so that CORS preflights are answered where they land.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_WRITE_ON_READ_METHODS = frozenset({"GET", "HEAD"})

# The replay counter travels in fly-replay's `state` field, which Fly's proxy
# hands back in the replayed request's fly-replay-src header.
_STATE_PREFIX = "litefs-route-hop-"
_REPLAY_SRC_STATE = re.compile(r"(?:^|;)\s*state=" + re.escape(_STATE_PREFIX) + r"([0-9]{1,3})\s*(?:;|$)")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_FORWARD_HOP = re.compile(r"[0-9]")
# A fly-replay-src longer than this is not Fly's; we do not scan it.
_REPLAY_SRC_LIMIT = 1024
# While a write waits for a primary, the mount is read at most this often
# (shared by every waiting request through the single-flight cache); a
# pushed state wakes it at once.
_PRIMARY_POLL = 0.05

NO_PRIMARY_REASON = "no primary is known right now (a LiteFS election or failover)"
_DISAGREE_REASON = "replayed {} times without reaching the primary (the instances disagree on the primary)"
_RAN_HERE_REASON = "this instance was not the primary when the request ran"
# SQLite refused the write on a node that is the primary after all (SQLITE_BUSY: lock contention, or LiteFS restarting).
_REFUSED_HERE_REASON = "SQLite refused its write on this instance and none of it ran"
_MAY_HAVE_RUN_REASON = (
    "its write failed on instance {} while LiteFS was stopping or had stopped there, "
    "and LiteFS may have committed it first"
)
_LAGGING_REASON = "its TXID did not arrive in time"
_FORWARD_LOOP_REASON = "it was forwarded here {} times and this instance is not the primary either"
# Fly's proxy could not deliver our replay and sent the request back (fly-replay-failed).
_REPLAY_FAILED_REASON = "the replay to instance {} failed ({}), and a request sent back may not be replayed again"
_REPLAY_FAILED_FIELD = re.compile(r"(?:^|;)\s*(instance|reason)=([A-Za-z0-9_.-]{1,64})\s*(?=;|$)")


class PathGlobs:
    """LiteFS-style path globs: ``*`` matches anything, ``/`` included.

    Anchored at both ends and matched against the decoded path without the
    query string, as LiteFS's ``passthrough``/``always-forward`` are.

    Matching is linear in the path's length whatever the patterns (a path is
    client input, matched on every request): a glob is split at its stars
    into literal segments; the first must start the path, the last end it,
    and each one between is found left to right after the one before
    (``str.find``, in C). Leftmost is always right for ``*``-only globs: an
    earlier match leaves the most room for the segments after it. No
    backtracking, unlike the regex this replaces (``/*/*/*/edit`` against
    2 KB of slashes took seconds).
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        if isinstance(patterns, str):
            raise TypeError("path globs are a list of strings, not a string")
        self.patterns = tuple(patterns)
        for pattern in self.patterns:
            if not isinstance(pattern, str) or not pattern.startswith(("/", "*")):
                raise ValueError(f"path glob must be a string starting with '/' or '*': {pattern!r}")
        self.match: Callable[[str], object] = _matcher(self.patterns)
        """``match(path)``: truthy if a glob matches *path* (it runs on every GET)."""

    def __repr__(self) -> str:
        return f"PathGlobs({list(self.patterns)!r})"


class _Glob(NamedTuple):
    """A glob with a ``*``: the literal before its first star, those between stars, the one after its last."""

    head: str
    middles: tuple[str, ...]
    tail: str
    #: The shortest path it matches.
    min_length: int

    @classmethod
    def compile(cls, pattern: str) -> _Glob:
        head, *middles, tail = pattern.split("*")
        middles = [m for m in middles if m]  # "**" is "*"
        return cls(head, tuple(middles), tail, len(head) + sum(map(len, middles)) + len(tail))


def _matcher(patterns: tuple[str, ...]) -> Callable[[str], object]:
    """The fastest callable that matches *patterns*: in C for the common shapes (each a single test)."""
    exact = frozenset(p for p in patterns if "*" not in p)
    globs = [_Glob.compile(p) for p in patterns if "*" in p]
    # "/static/*" is a prefix test, "*.png" a suffix test: str methods taking a tuple, in C.
    prefixes = tuple(g.head for g in globs if not g.middles and not g.tail)
    suffixes = tuple(g.tail for g in globs if not g.middles and not g.head and g.tail)
    wild = tuple(g for g in globs if g.middles or (g.head and g.tail))
    if not prefixes and not suffixes and not wild:
        return exact.__contains__
    if not exact and not wild and not (prefixes and suffixes):
        method = "startswith" if prefixes else "endswith"
        return operator.methodcaller(method, prefixes or suffixes)

    if not wild:  # exact paths, prefixes and suffixes: three tests in C

        def match_simple(path: str) -> bool:
            return path in exact or path.startswith(prefixes) or path.endswith(suffixes)

        return match_simple

    # One plain function, the globs' loop inlined: it runs on every GET.
    def match(path: str) -> bool:
        if path in exact or path.startswith(prefixes) or path.endswith(suffixes):
            return True
        size = len(path)
        for head, middles, tail, min_length in wild:
            if size < min_length or not path.startswith(head) or not path.endswith(tail):
                continue
            position, end = len(head), size - len(tail)
            for middle in middles:
                found = path.find(middle, position, end)  # leftmost: leaves the most room for the rest
                if found < 0:
                    break
                position = found + len(middle)
            else:
                return True
        return False

    return match


_NO_GLOBS = PathGlobs(())


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """The options the rules depend on (validated by the middleware that builds them)."""

    write_on_read: PathGlobs
    passthrough: PathGlobs
    #: Replays of one request (counted in fly-replay `state`) before 503.
    max_replays: int
    #: Largest body Fly's proxy replays; larger writes get 413.
    replay_body_limit: int
    #: Seconds a write waits for a primary when none is known.
    primary_wait: float
    #: Seconds a replica spends measuring a body of unknown length.
    body_timeout: float
    #: True when read-your-writes is on (a mount and a database are configured).
    read_your_writes: bool
    #: Seconds a replica read waits for its TXID cookie.
    consistency_wait: float
    #: The health check's path (GET), None when off.
    health_path: str | None = None
    #: The replication lag, in seconds, above which the health check fails (0: never).
    max_lag: float = 10.0
    #: WebSocket paths whose handlers write: their handshake is routed as a write.
    write_sockets: PathGlobs = _NO_GLOBS
    #: Forward mode: "off", "oversize" (the writes Fly cannot replay), "always" (every write).
    forward: str = "off"
    #: The secret a forwarded request must carry; None: no forwarded request is run here.
    forward_secret: Secret | None = None


#: Headers as a server hands them over: CGI-style (``HTTP_X_REQUEST_ID``), or ASGI's ``(name, value)`` bytes.
RawHeaders = Mapping[str, Any] | Iterable[tuple[bytes, bytes]]


# Built on every request: a plain slotted class (a frozen dataclass's
# __init__ costs ~0.5 µs more). Nothing mutates one after it is built.
@dataclass(slots=True)
class RequestInfo:
    """What the rules need to know about a request."""

    method: str
    #: Decoded path, no query string (what the app routes on).
    path: str
    #: The raw ``fly-replay-src`` header, None when absent.
    replay_src: str | None = None
    #: ``Content-Length`` as sent, None when absent or malformed.
    content_length: int | None = None
    #: True when the body's length is unknown (``Transfer-Encoding: chunked``).
    unknown_length: bool = False
    #: The read-your-writes TXID of each database from its cookie (0: no
    #: cookie for it), in the ``database`` option's order; None if none.
    txids: tuple[int, ...] | None = None
    #: The raw ``fly-replay-failed`` header: Fly's proxy could not deliver a
    #: replay of this request and sent it back here. None when absent.
    replay_failed: str | None = None
    #: A WebSocket handshake (routed only on a ``write_sockets`` path).
    websocket: bool = False
    #: The secret a request forwarded by litefs-route claims to carry; None: not forwarded.
    forward_claim: Secret | None = None
    #: How many times litefs-route forwarded it so far (its hop header; 0 if none or malformed).
    forward_hops: int = 0
    #: Both ``Content-Length`` and ``Transfer-Encoding``: where its body ends is ambiguous (refused, 400).
    ambiguous_length: bool = False
    #: The request's headers as its server gave them (a WSGI environ or Django's ``META``; ASGI's list),
    #: read only when a log record names the request (its id): kept, not parsed, on every request.
    raw_headers: RawHeaders | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_headers(
        cls,
        method: str,
        path: str,
        *,
        replay_src: str | None,
        content_length: str | None,
        transfer_encoding: str | None,
        cookie: str | None = None,
        txid_cookies: TxidCookies | None = None,
        replay_failed: str | None = None,
        websocket: bool = False,
        forward_claim: str | None = None,
        forward_hop: str | None = None,
    ) -> RequestInfo:
        """Build from raw header values; anything malformed counts as absent.

        *txid_cookies*: the read-your-writes cookies to look for in *cookie*
        (None: read-your-writes is off, no cookie is parsed).
        """
        if not (
            content_length or transfer_encoding or cookie or replay_failed or websocket or forward_claim is not None
        ):
            return cls(method, path, replay_src)  # most reads: nothing to parse
        length = int(content_length) if content_length and _CONTENT_LENGTH.fullmatch(content_length) else None
        chunked = transfer_encoding is not None and "chunked" in transfer_encoding.lower()
        txids = txid_cookies.parse(cookie) if txid_cookies is not None else None
        hops = int(forward_hop) if forward_hop and _FORWARD_HOP.fullmatch(forward_hop) else 0
        # RFC 9112 6.3: a request with both is a likely smuggling attempt; a
        # proxy in front may have framed it the other way. Never guessed at.
        ambiguous = bool(content_length) and bool(transfer_encoding)
        return cls(
            method,
            path,
            replay_src,
            length,
            chunked and length is None,
            txids,
            replay_failed,
            websocket,
            None if forward_claim is None else Secret(forward_claim),
            hops,
            ambiguous,
        )


class Kind(enum.Enum):
    """A final answer."""

    RUN = "run"  # call the app here
    REPLAY = "replay"  # answer with fly-replay: instance=<target>
    UNAVAILABLE = "unavailable"  # 503 + Retry-After
    TOO_LARGE = "too-large"  # 413: Fly cannot replay this body
    TIMEOUT = "timeout"  # 408: a body of unknown length did not arrive in time to be measured
    HEALTHY = "healthy"  # 200: the health check passes
    UNHEALTHY = "unhealthy"  # 503: the health check fails (replication lag)
    FORWARD = "forward"  # send the request to <target> ourselves and relay its answer (forward mode)
    FORBIDDEN = "forbidden"  # 403: claims to be forwarded by litefs-route, without this cluster's secret
    OUTCOME_UNKNOWN = "outcome-unknown"  # 502: a write that failed here may have run; never replayed
    BAD_REQUEST = "bad-request"  # 400: both Content-Length and Transfer-Encoding (RFC 9112 6.3)


# A NamedTuple: immutable (one instance may serve every request), and built,
# hashed and compared in C (a frozen dataclass costs ~7,000 instructions more
# per replayed request, measured with callgrind).
class Decision(NamedTuple):
    """A final answer: run the app here, or the response that replaces it."""

    kind: Kind
    #: True if the request was routed as a write (it mutates the database).
    write: bool
    #: The replay target (REPLAY, TOO_LARGE; UNAVAILABLE: the replay Fly's proxy could not deliver).
    target: str | None = None
    #: The replay's hop number, carried in fly-replay's `state` (REPLAY only).
    hops: int = 0
    #: Why, in words a user may read (UNAVAILABLE, TOO_LARGE, TIMEOUT; a read's REPLAY).
    reason: str = ""
    #: The path is a passthrough path (RUN only): never gets a TXID cookie.
    passthrough: bool = False


# Immutable, so one instance serves every request that ends in it.
_RUN_READ = Decision(Kind.RUN, write=False)
_RUN_WRITE = Decision(Kind.RUN, write=True)
_RUN_PASSTHROUGH = Decision(Kind.RUN, write=False, passthrough=True)
_RUN_PASSTHROUGH_WRITE = Decision(Kind.RUN, write=True, passthrough=True)
#: The answer to a write when no primary is known, after the wait (rule 4).
NO_PRIMARY = Decision(Kind.UNAVAILABLE, write=True, reason=NO_PRIMARY_REASON)
# Rule 0: refused before anything runs, whatever the method and the node.
_BAD_FRAMING = Decision(
    Kind.BAD_REQUEST, write=False, reason="it has both Content-Length and Transfer-Encoding (RFC 9112 6.3)"
)


class Pending(enum.Enum):
    """Not an answer yet: what :func:`decide` needs to know first (the plans fetch it)."""

    WAIT_FOR_PRIMARY = "wait-for-primary"  # no primary known: wait for one, decide again
    MEASURE_BODY = "measure-body"  # a replay whose body size is unknown: measure, decide again
    WAIT_FOR_TXID = "wait-for-txid"  # a replica read behind its TXID cookie: wait for it
    CHECK_TXID = "check-txid"  # a primary read with a TXID cookie: is the cookie ahead of us?
    CHECK_HEALTH = "check-health"  # the health check: read .lag now


# -- the I/O a plan needs (what the driver sends back, in brackets) --------


@dataclass(frozen=True, slots=True)
class ReadState:
    """The node state, at most *max_age* seconds old; None: the cache's TTL [NodeState]."""

    max_age: float | None


@dataclass(frozen=True, slots=True)
class ReadMount:
    """The node state read from the mount now, even while LiteFS's event stream pushes it [NodeState].

    For a request SQLite refused as read-only: the strongest sign that the
    state it was routed on, pushed or cached, is wrong.
    """


@dataclass(frozen=True, slots=True)
class ReadClock:
    """The monotonic clock, in seconds [float]."""


@dataclass(frozen=True, slots=True)
class AwaitChange:
    """The node state once it may differ from *seen*, at most *timeout* seconds from now [NodeState].

    While LiteFS's event stream pushes the state, the next push answers at
    once; otherwise the state is read after *timeout* (from the cache, shared
    by every waiting request; or, with *from_mount*, from the mount itself,
    because the mount has contradicted a pushed state). Never blocks an
    event loop.
    """

    seen: NodeState
    timeout: float
    from_mount: bool = False


@dataclass(frozen=True, slots=True)
class MeasureBody:
    """The request body's size, reading at most *limit* + 1 bytes within *timeout* seconds.

    [int, or None if the body did not arrive in time]
    """

    limit: int
    timeout: float


@dataclass(frozen=True, slots=True)
class WaitForTxids:
    """Wait until each database's local TXID reaches its one in *txids* (0: none), at most *timeout* seconds in all.

    [bool: all reached]
    """

    txids: tuple[int, ...]
    timeout: float


@dataclass(frozen=True, slots=True)
class ReadPositions:
    """Each database's local TXID, read now [a tuple of int, or None where unknown]."""


Need = ReadState | ReadMount | ReadClock | AwaitChange | MeasureBody | WaitForTxids | ReadPositions
#: What a driver sends back for a :data:`Need` (checked by the plan).
Answer = NodeState | float | int | bool | tuple[int | None, ...] | None


# Built on every request: a plain slotted class, as RequestInfo (cheaper to
# build than a NamedTuple, whose __new__ is Python code).
@dataclass(slots=True)
class Outcome:
    """Where a plan ends: the decision, and the reading it was made on."""

    decision: Decision
    state: NodeState
    #: The databases (indexes) whose TXID cookie is ahead of this primary: clear those cookies.
    clear_txids: tuple[int, ...] = ()


Plan = Generator[Need, Answer, Outcome]


def replay_hops(replay_src: str | None) -> int:
    """How many times litefs-route already replayed this request (0 if none)."""
    if not replay_src or len(replay_src) > _REPLAY_SRC_LIMIT:
        return 0
    match = _REPLAY_SRC_STATE.search(replay_src)
    return int(match[1]) if match else 0


def replay_state(hops: int) -> str:
    """The fly-replay `state` value for a replay that is hop number *hops*."""
    return f"{_STATE_PREFIX}{hops}"


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
        return _BAD_FRAMING
    if request.forward_claim is not None and not forced:
        return _decide_forwarded(request, state, rules)
    if request.path == rules.health_path and method == "GET" and not forced:
        return Pending.CHECK_HEALTH
    if not forced:
        if request.websocket:
            # A socket on a write_sockets path must be held by the primary (Fly
            # replays the handshake); any other runs here untouched.
            if not rules.write_sockets.match(request.path):
                return _RUN_READ
        elif method in READ_METHODS and not (
            method in _WRITE_ON_READ_METHODS and rules.write_on_read.match(request.path)
        ):
            # Most reads carry no TXID: then passthrough cannot matter (both
            # run here) and its globs are not matched at all.
            return _RUN_READ if request.txids is None else _decide_read(request, state, rules, known_txids)
        if rules.passthrough.match(request.path):
            return _RUN_PASSTHROUGH
    if state.is_primary:
        if forced and rules.passthrough.match(request.path):
            return _RUN_PASSTHROUGH_WRITE
        return _RUN_WRITE
    if state.role is Role.NO_PRIMARY or state.primary_id is None:
        return Pending.WAIT_FOR_PRIMARY
    hops = replay_hops(request.replay_src)
    if hops >= rules.max_replays:
        return Decision(Kind.UNAVAILABLE, True, reason=_DISAGREE_REASON.format(hops))
    # Forward mode sends a write to the primary before its handler runs (never
    # after: the handler may have read the body, and the request may have written).
    # It forwards what Fly cannot replay (too large), or could not deliver (sent back), or every write ("always").
    limit = rules.replay_body_limit
    size = request.content_length if request.content_length is not None else body_size
    too_large = size is not None and size > limit
    if (
        rules.forward != "off"
        and not forced
        and not request.websocket  # a socket is never forwarded
        and (rules.forward == "always" or too_large or request.replay_failed is not None)
    ):
        return Decision(Kind.FORWARD, True, target=state.primary_id, hops=1)
    if too_large:
        return Decision(Kind.TOO_LARGE, True, target=state.primary_id, reason=f"the body is larger than {limit} bytes")
    if size is None and request.unknown_length and not forced:
        return Pending.MEASURE_BODY
    return _replay(request, True, state.primary_id, hops + 1)


_FORBIDDEN = Decision(Kind.FORBIDDEN, write=True, reason="it claims to be forwarded but lacks this cluster's secret")


def _decide_forwarded(request: RequestInfo, state: NodeState, rules: Rules) -> Decision | Pending:
    """A request that claims another instance forwarded it: run only with the secret, only on the primary."""
    if not _genuine(request.forward_claim, rules):
        return _FORBIDDEN
    if state.is_primary:
        return _RUN_WRITE
    if state.role is Role.NO_PRIMARY or state.primary_id is None:
        return Pending.WAIT_FOR_PRIMARY
    hops = request.forward_hops
    if rules.forward == "off" or hops >= rules.max_replays or request.websocket:
        return Decision(Kind.UNAVAILABLE, True, reason=_FORWARD_LOOP_REASON.format(hops))
    return Decision(Kind.FORWARD, True, target=state.primary_id, hops=hops + 1)


def _genuine(claim: Secret | None, rules: Rules) -> bool:
    """True if *claim* is this cluster's forward secret (compared in constant time)."""
    secret = rules.forward_secret
    return secret is not None and secret.matches(claim)


def _replay(request: RequestInfo, write: bool, target: str, hops: int, reason: str = "") -> Decision:
    """The replay to *target*; or, for a request Fly's proxy sent back (``fly-replay-failed``), a 503.

    Fly forbids a request sent back from replaying again, and a write must
    not run on a replica: refused, and retried by the client later.
    """
    if request.replay_failed is None:
        return Decision(Kind.REPLAY, write, target=target, hops=hops, reason=reason)
    return Decision(Kind.UNAVAILABLE, write, target=target, reason=replay_failure(request.replay_failed))


def replay_failure(replay_failed: str) -> str:
    """Why a request came back: a ``fly-replay-failed`` header in words (the reason of its 503)."""
    fields = dict(_REPLAY_FAILED_FIELD.findall(replay_failed[:_REPLAY_SRC_LIMIT]))
    return _REPLAY_FAILED_REASON.format(fields.get("instance", "?"), fields.get("reason", "unknown reason"))


_HEALTHY = Decision(Kind.HEALTHY, write=False)


def health(state: NodeState, rules: Rules) -> Decision:
    """Rule 10: the health check's answer on a node in *state* (read from the mount)."""
    if state.is_primary:
        return _HEALTHY
    lag_ms = state.lag_ms
    if lag_ms is None or lag_ms < 0:
        return Decision(Kind.UNHEALTHY, False, reason=f"replication lag unknown ({state.detail})")
    if rules.max_lag > 0 and lag_ms > rules.max_lag * 1000:
        return Decision(Kind.UNHEALTHY, False, reason=f"replication lag {lag_ms} ms exceeds {rules.max_lag:g} s")
    return _HEALTHY


def counter_name(decision: Decision) -> str:
    """The :mod:`~litefs_route._counters` name of a decision that does not run the app."""
    match decision.kind:
        case Kind.REPLAY:
            return "read_replays" if decision.reason == _LAGGING_REASON else "replays"
        case Kind.UNAVAILABLE:
            if decision.reason == NO_PRIMARY_REASON:
                return "unavailable_no_primary"
            if decision.target is not None:  # only a refused replay names its target
                return "unavailable_replay_failed"
            if decision.reason in (_RAN_HERE_REASON, _REFUSED_HERE_REASON):
                return "unavailable_ran_here"
            return "unavailable_too_many_replays"
        case Kind.TOO_LARGE:
            return "too_large"
        case Kind.FORWARD:
            return "forwards"
        case Kind.FORBIDDEN:
            return "forbidden_forwards"
        case Kind.OUTCOME_UNKNOWN:
            return "outcome_unknown"
        case Kind.BAD_REQUEST:
            return "bad_requests"
        case Kind.TIMEOUT:
            return "body_timeouts"
        case Kind.HEALTHY | Kind.UNHEALTHY:
            return "health_checks_passed" if decision.kind is Kind.HEALTHY else "health_checks_failed"
        case Kind.RUN:
            raise ValueError("a decision that runs the app is not counted")
        case _:
            assert_never(decision.kind)


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
        return _RUN_READ
    if rules.passthrough.match(request.path):
        return _RUN_PASSTHROUGH
    if state.role is Role.REPLICA:
        return Pending.WAIT_FOR_TXID
    if state.role is Role.PRIMARY:
        return Pending.CHECK_TXID
    return _RUN_READ


def _reached(txids: tuple[int, ...], known: tuple[int | None, ...]) -> bool:
    """True if every database is known to have reached its TXID (0: no cookie for it)."""
    return all(not txid or (seen is not None and seen >= txid) for txid, seen in zip(txids, known, strict=True))


def _ahead(txids: tuple[int, ...], local: tuple[int | None, ...]) -> tuple[int, ...]:
    """The databases (indexes) whose cookie is ahead of this node's TXID (or whose TXID is unknown)."""
    return tuple(
        i for i, (txid, seen) in enumerate(zip(txids, local, strict=True)) if txid and (seen is None or txid > seen)
    )


def _decide_lagging_read(request: RequestInfo, state: NodeState, rules: Rules) -> Decision:
    """Rule 6: a replica read whose TXID did not arrive in time."""
    hops = replay_hops(request.replay_src)
    if state.role is not Role.REPLICA or state.primary_id is None or hops >= rules.max_replays:
        return _RUN_READ
    if request.replay_failed is not None:  # the primary is out of reach: the best this node has
        return _RUN_READ
    return Decision(Kind.REPLAY, False, target=state.primary_id, hops=hops + 1, reason=_LAGGING_REASON)


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
    if cached is None or _needs_fresh_state(request, rules):
        return None
    step = decide(request, cached, rules, known_txids=known_txids)
    return Outcome(step, cached) if type(step) is Decision else None


def _needs_fresh_state(request: RequestInfo, rules: Rules) -> bool:
    # A replayed request was sent here because another node believes this
    # one is primary: decide on the truth, not on a cached reading, so a node
    # that was just promoted keeps the write instead of bouncing it.
    # A request Fly's proxy sent back found its target unreachable, and one
    # forwarded here was sent by a node that believes this one is primary: the same.
    # (A forged claim costs no read: it is refused on any state.)
    if request.replay_src is not None or request.replay_failed is not None:
        return True
    return request.forward_claim is not None and _genuine(request.forward_claim, rules)


def plan_request(request: RequestInfo, rules: Rules, *, known_txids: tuple[int | None, ...] | None = None) -> Plan:
    """Route *request*: rules 1-6, yielding each piece of I/O they need."""
    state = _expect_state((yield ReadState(0 if _needs_fresh_state(request, rules) else None)))
    step = decide(request, state, rules, known_txids=known_txids)
    waited_for_primary = False
    while True:
        match step:
            case Decision():
                return Outcome(step, state)
            case Pending.WAIT_FOR_PRIMARY:
                if waited_for_primary:
                    return Outcome(NO_PRIMARY, state)
                state = yield from _wait_for_primary(state, rules)
                waited_for_primary = True
                step = decide(request, state, rules, known_txids=known_txids)
            case Pending.MEASURE_BODY:
                size = _expect_optional_int((yield MeasureBody(rules.replay_body_limit, rules.body_timeout)))
                if size is None:
                    reason = f"its body did not arrive within {rules.body_timeout:g} s"
                    return Outcome(Decision(Kind.TIMEOUT, True, reason=reason), state)
                step = decide(request, state, rules, body_size=size)
            case Pending.WAIT_FOR_TXID:
                assert request.txids is not None
                caught_up = _expect_bool((yield WaitForTxids(request.txids, rules.consistency_wait)))
                step = _RUN_READ if caught_up else _decide_lagging_read(request, state, rules)
            case Pending.CHECK_TXID:
                assert request.txids is not None
                local = _expect_positions((yield ReadPositions()), len(request.txids))
                return Outcome(_RUN_READ, state, clear_txids=_ahead(request.txids, local))
            case Pending.CHECK_HEALTH:
                state = _expect_state((yield ReadMount()))  # .lag now: a pushed state carries none
                return Outcome(health(state, rules), state)
            case _:
                assert_never(step)


def plan_settlement(
    request: RequestInfo,
    rules: Rules,
    *,
    failure: WriteFailureKind | None = None,
    routed_as_primary: bool = False,
) -> Plan:
    """Rule 8: the answer for a request that ran here but must end on the primary.

    *failure*: how SQLite failed the request's write (None: ``ensure_primary()``
    ended it). *routed_as_primary*: the reading the request was routed on
    said this node is the primary. Never RUN (the app already ran); the
    outcome's state is the fresh reading it was decided on (for the reply's tags).
    """
    state = _expect_state((yield ReadMount()))
    if failure is WriteFailureKind.IO_ERROR and not _refused_by_litefs(state, routed_as_primary):
        reason = _MAY_HAVE_RUN_REASON.format(state.instance_id)
        return Outcome(Decision(Kind.OUTCOME_UNKNOWN, True, reason=reason), state)
    state = yield from _wait_for_primary(state, rules, from_mount=True)
    step = decide(request, state, rules, forced=True)
    match step:
        case Decision(kind=Kind.RUN):
            reason = _RAN_HERE_REASON if failure is None else _REFUSED_HERE_REASON
            return Outcome(Decision(Kind.UNAVAILABLE, True, reason=reason), state)
        case Decision():
            return Outcome(step, state)
        case Pending.WAIT_FOR_PRIMARY:
            return Outcome(NO_PRIMARY, state)
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


def assert_never(value: NoReturn) -> NoReturn:
    """Unreachable: mypy checks that every case is handled (``typing.assert_never`` is 3.11+)."""
    raise AssertionError(f"unhandled: {value!r}")


def _wait_for_primary(
    state: NodeState, rules: Rules, *, from_mount: bool = False
) -> Generator[Need, Answer, NodeState]:
    """Rule 4: re-read the state (*from_mount*: the mount) until a primary is known or ``primary_wait`` has passed."""
    if state.role is not Role.NO_PRIMARY:
        return state
    deadline = _expect_float((yield ReadClock())) + rules.primary_wait
    while state.role is Role.NO_PRIMARY and _expect_float((yield ReadClock())) < deadline:
        state = _expect_state((yield AwaitChange(state, _PRIMARY_POLL, from_mount)))
    return state


# What a driver sends back is checked: a driver bug fails loudly here rather
# than as a wrong routing decision.


def _expect_state(answer: Answer) -> NodeState:
    if not isinstance(answer, NodeState):
        raise TypeError(f"a driver answered ReadState with {answer!r}, not a NodeState")
    return answer


def _expect_float(answer: Answer) -> float:
    if isinstance(answer, bool) or not isinstance(answer, int | float):
        raise TypeError(f"a driver answered ReadClock with {answer!r}, not a number")
    return answer


def _expect_bool(answer: Answer) -> bool:
    if not isinstance(answer, bool):
        raise TypeError(f"a driver answered WaitForTxids with {answer!r}, not a bool")
    return answer


def _expect_positions(answer: Answer, count: int) -> tuple[int | None, ...]:
    if not (
        isinstance(answer, tuple)
        and len(answer) == count
        and all(p is None or (isinstance(p, int) and not isinstance(p, bool)) for p in answer)
    ):
        raise TypeError(f"a driver answered ReadPositions with {answer!r}, not {count} ints or None")
    return answer


def _expect_optional_int(answer: Answer) -> int | None:
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, int)):
        raise TypeError(f"a driver answered with {answer!r}, not an int or None")
    return answer
