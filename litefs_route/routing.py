"""The router: settings, node state and the plan both adapters drive.

:meth:`Router.plan` is a generator that holds every routing rule that needs
I/O (fresh state for replayed requests, waiting for a primary, measuring a
body of unknown length) without doing any: it *yields* what it needs
(:class:`ReadState`, :class:`Sleep`, :class:`MeasureBody`) and the WSGI
adapter fulfils those inline while the ASGI adapter awaits them off the
event loop. One plan, two drivers, so the adapters cannot disagree.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Unpack

from .consistency import TXID_COOKIE, PositionWatcher
from .decision import (
    NO_PRIMARY_REASON,
    Decision,
    Kind,
    PathGlobs,
    RequestInfo,
    Rules,
    decide,
    decide_lagging_read,
    replay_state,
)
from .mount import NodeState, Role, default_instance_id, is_valid_instance_id
from .node import StateCache

__all__ = [
    "Headers",
    "MeasureBody",
    "Need",
    "Outcome",
    "ReadPosition",
    "ReadState",
    "Reply",
    "Router",
    "RouterOptions",
    "RoutingMiddleware",
    "Sleep",
    "WaitForTxid",
    "is_readonly_error",
]

# While a write waits for a primary, the mount is read at most this often
# (shared by every waiting request through the single-flight cache).
_PRIMARY_POLL = 0.05
# Distinct replies remembered by Router.reply().
_REPLY_MEMO_SIZE = 64

# Our own headers: tagged on every response, and dropped from the app's
# response first so that a stale copy set by the app cannot survive.
PRIMARY_HEADER = "Fly-Primary-Instance"
INSTANCE_HEADER = "Fly-Instance"
REPLAY_HEADER = "fly-replay"


@dataclass(frozen=True, slots=True)
class ReadState:
    """Need: the node state, at most *max_age* seconds old (None: the TTL)."""

    max_age: float | None


@dataclass(frozen=True, slots=True)
class Sleep:
    """Need: wait *seconds* (without blocking an event loop)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class MeasureBody:
    """Need: the request body's size, reading at most *limit* + 1 bytes within *timeout* seconds.

    Sends back the size, or None if the body did not arrive in time.
    """

    limit: int
    timeout: float


@dataclass(frozen=True, slots=True)
class WaitForTxid:
    """Need: wait until the local TXID reaches *txid*; sends back True if it did."""

    txid: int
    timeout: float


@dataclass(frozen=True, slots=True)
class ReadPosition:
    """Need: the local TXID, read now (None if unknown)."""


Need = ReadState | Sleep | MeasureBody | WaitForTxid | ReadPosition


@dataclass(slots=True)  # built per request: not frozen, see RequestInfo
class Outcome:
    decision: Decision
    state: NodeState
    #: The request's __txid cookie is ahead of this primary: clear it.
    clear_txid: bool = False


Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """A response the middleware makes itself (replay, 503, 413)."""

    status: int
    headers: Headers
    body: bytes

    @property
    def status_line(self) -> str:
        return f"{self.status} {_REASONS[self.status]}"


_REASONS = {408: "Request Timeout", 409: "Conflict", 413: "Content Too Large", 503: "Service Unavailable"}


def _env_dir() -> str | None:
    return os.environ.get("LITEFS_DIR") or None


class Router:
    """Everything both middleware adapters share. Built once per middleware.

    Options (keyword-only, the same for WSGI and ASGI):

    litefs_dir
        The LiteFS mount directory. Default: ``$LITEFS_DIR``. Unset or
        empty: standalone, every request runs locally. Set but missing or
        not a live mount: no primary known (writes wait, then 503).
    instance_id
        This instance's id. Default: ``$FLY_MACHINE_ID``, then the host name.
    write_on_read
        Path globs of GET/HEAD requests that write and must run on the
        primary (``"/auth/callback/*"``).
    passthrough
        Path globs never routed (static files, health checks).
    cache_ttl
        Seconds a reading of the mount is reused (default 1.0; 0 reads on
        every request). The staleness bound of every routing decision.
    primary_wait
        Seconds a write waits for a primary when none is known (default 5.0,
        as LiteFS's proxy) before it is answered 503.
    max_replays
        Replays of one request before it is answered 503 (default 3, at most
        9: Fly's edge gives up after 10).
    replay_body_limit
        The largest body Fly's proxy replays (default 1,000,000 bytes).
    body_timeout
        Seconds a replica spends measuring a chunked write's body (no
        ``Content-Length``) before it answers 408 (default 10.0).
    retry_after
        Seconds in the ``Retry-After`` of a 503 (default 2).
    database
        The database file name in the mount, for read-your-writes. Default:
        ``$DATABASE_FILENAME``. Without one, consistency is off.
    consistency_wait
        Seconds a read on a replica waits for the TXID in its ``__txid``
        cookie before it is replayed to the primary (default 1.0).
    txid_cookie_max_age
        Lifetime of the ``__txid`` cookie in seconds (default 300, as LiteFS).
    txid_cookie_secure
        Add ``Secure`` to the cookie (default False, as LiteFS's proxy).
    """

    def __init__(
        self,
        *,
        litefs_dir: str | os.PathLike[str] | None = None,
        instance_id: str | None = None,
        write_on_read: Iterable[str] = (),
        passthrough: Iterable[str] = (),
        cache_ttl: float = 1.0,
        primary_wait: float = 5.0,
        max_replays: int = 3,
        replay_body_limit: int = 1_000_000,
        body_timeout: float = 10.0,
        retry_after: int = 2,
        database: str | None = None,
        consistency_wait: float = 1.0,
        txid_cookie_max_age: int = 300,
        txid_cookie_secure: bool = False,
    ) -> None:
        if isinstance(write_on_read, str) or isinstance(passthrough, str):
            raise TypeError("write_on_read and passthrough take a list of globs, not a string")
        self.instance_id = instance_id or default_instance_id()
        if not is_valid_instance_id(self.instance_id):
            raise ValueError(f"instance_id must be a host name or Fly Machine ID, got {self.instance_id!r}")
        for name, value in (
            ("cache_ttl", cache_ttl),
            ("primary_wait", primary_wait),
            ("consistency_wait", consistency_wait),
            ("body_timeout", body_timeout),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        # Fly's edge gives up after 10 replays; ours must answer 503 before that.
        if not 1 <= max_replays <= 9 or replay_body_limit < 0 or retry_after < 0:
            raise ValueError("max_replays must be 1 to 9; replay_body_limit and retry_after >= 0")
        self.litefs_dir = os.fspath(litefs_dir) if litefs_dir is not None else _env_dir()
        self.rules = Rules(PathGlobs(write_on_read), PathGlobs(passthrough), max_replays, replay_body_limit)
        self.primary_wait = float(primary_wait)
        self.body_timeout = float(body_timeout)
        self.retry_after = retry_after
        self.cache = StateCache(self.litefs_dir, self.instance_id, float(cache_ttl))
        database = database or os.environ.get("DATABASE_FILENAME") or None
        if database is not None and (os.sep in database or database.startswith(".")):
            raise ValueError(f"database must be a file name in the mount, got {database!r}")
        #: The read-your-writes watcher; None when consistency is off.
        self.positions = PositionWatcher(self.litefs_dir, database) if self.litefs_dir and database else None
        self.consistency_wait = float(consistency_wait)
        attributes = f"Path=/; Max-Age={int(txid_cookie_max_age)}; HttpOnly; SameSite=Lax"
        self._txid_cookie_attributes = attributes + ("; Secure" if txid_cookie_secure else "")
        self._last_tags: tuple[NodeState | None, Headers] = (None, ())
        self._replies: dict[tuple[Kind, str | None, int, str], Reply] = {}

    # -- the plan ---------------------------------------------------------

    def plan(self, request: RequestInfo) -> Generator[Need, Any, Outcome]:
        """Decide *request*, yielding each piece of I/O the decision needs."""
        # A replayed request was sent here because another node believes this
        # one is primary: decide on the truth, not on our cached reading, so a
        # node that was just promoted keeps the write instead of bouncing it.
        state: NodeState = yield ReadState(0 if request.replay_src is not None else None)
        decision = decide(request, state, self.rules)
        if self._settled(request, decision):
            return Outcome(decision, state)
        if decision.kind is Kind.WAIT_FOR_PRIMARY:
            state = yield from self._wait_for_primary(state)
            decision = decide(request, state, self.rules, waited_for_primary=True)
        if decision.kind is Kind.MEASURE_BODY:
            size: int | None = yield MeasureBody(self.rules.replay_body_limit, self.body_timeout)
            if size is None:
                reason = f"its body did not arrive within {self.body_timeout:g} s"
                decision = Decision(Kind.TIMEOUT, True, reason=reason)
            else:
                decision = decide(request, state, self.rules, waited_for_primary=True, body_size=size)
        clear_txid = False
        if decision.kind is Kind.RUN and not decision.write and self._consistent_read(request):
            assert request.txid is not None
            if state.role is Role.REPLICA:
                caught_up: bool = yield WaitForTxid(request.txid, self.consistency_wait)
                if not caught_up:
                    decision = decide_lagging_read(request, state, self.rules)
            elif state.role is Role.PRIMARY:
                # The primary never waits; a cookie ahead of it is from before a
                # failover that lost writes, and would make replicas wait in vain.
                txid: int | None = yield ReadPosition()
                clear_txid = txid is None or request.txid > txid
        return Outcome(decision, state, clear_txid)

    def _wait_for_primary(self, state: NodeState) -> Generator[Need, Any, NodeState]:
        """Re-read the state until a primary is known or ``primary_wait`` has passed."""
        deadline = time.monotonic() + self.primary_wait
        while state.role is Role.NO_PRIMARY and time.monotonic() < deadline:
            yield Sleep(_PRIMARY_POLL)
            state = yield ReadState(_PRIMARY_POLL)
        return state

    def outcome_without_io(self, request: RequestInfo) -> Outcome | None:
        """The plan's outcome if it needs no I/O at all, else None.

        The common case (a cached reading that is fresh, a request that is
        not a replay, a decision that is final) without the cost of a
        generator: adapters try this first and drive :meth:`plan` only when
        it returns None. It is the plan's own first step, so the two agree.
        """
        if request.replay_src is not None:
            return None
        state = self.cache.fresh()
        if state is None:
            return None
        decision = decide(request, state, self.rules)
        return Outcome(decision, state) if self._settled(request, decision) else None

    def _settled(self, request: RequestInfo, decision: Decision) -> bool:
        """True if *decision* is final: no wait, no body to measure, no TXID to wait for."""
        kind = decision.kind
        if kind is Kind.RUN:
            return decision.write or not self._consistent_read(request)
        return kind is not Kind.WAIT_FOR_PRIMARY and kind is not Kind.MEASURE_BODY

    def _consistent_read(self, request: RequestInfo) -> bool:
        """True if *request* carries a TXID not known to be reached yet."""
        return (
            request.txid is not None
            and self.positions is not None
            and not self.positions.reached(request.txid)
            and not self.rules.passthrough.match(request.path)
        )

    def needs_txid(self, write: bool, state: NodeState, request: RequestInfo) -> bool:
        """True if the response to this request gets a fresh ``__txid`` cookie."""
        return (
            write
            and self.positions is not None
            and state.role is Role.PRIMARY
            and not self.rules.passthrough.match(request.path)
        )

    def txid_cookies(self, txid: int | None, clear: bool) -> list[tuple[str, str]]:
        """``Set-Cookie`` headers: the TXID after a write, or the clearing one."""
        if txid:
            return [("Set-Cookie", f"{TXID_COOKIE}={txid:016x}; {self._txid_cookie_attributes}")]
        if clear:
            return [("Set-Cookie", f"{TXID_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")]
        return []

    def require_primary(self, request: RequestInfo, state: NodeState) -> Decision:
        """The decision for a handler that called ``ensure_primary()``."""
        return decide(request, state, self.rules, force_write=True)

    def settle(self, request: RequestInfo) -> Generator[Need, Any, Outcome]:
        """Decide, after its app ran here, a request that must end on the primary.

        For :data:`SETTLE` decisions: ``ensure_primary()`` with no primary
        known, and the safety net (SQLite refused a write that slipped
        through: a stale reading, an unflagged GET, a write under way while
        LiteFS handed the lease off). Reads the mount afresh; with no primary
        known, waits up to ``primary_wait`` for one, as any write does; then
        replays to it, else 503. Never RUN: the app already ran here. The
        outcome's state is the reading it decided on (for the reply's tags).
        """
        state: NodeState = yield ReadState(0)
        state = yield from self._wait_for_primary(state)
        decision = decide(request, state, self.rules, force_write=True, waited_for_primary=True)
        if decision.kind is Kind.RUN:
            reason = "this instance was not the primary when the request ran"
            decision = Decision(Kind.UNAVAILABLE, True, reason=reason)
        return Outcome(decision, state)

    # -- responses --------------------------------------------------------

    def tags(self, state: NodeState) -> Headers:
        """The headers every response carries: who is primary, who answered."""
        last_state, tags = self._last_tags
        if state is not last_state:  # a new reading: at most once per cache_ttl
            tags = ((PRIMARY_HEADER, state.primary_id),) if state.primary_id is not None else ()
            tags += ((INSTANCE_HEADER, self.instance_id),)
            self._last_tags = (state, tags)
        return tags

    def reply(self, decision: Decision) -> Reply:
        """The response for a decision that does not run the app."""
        # Replies are built once per distinct decision: a replica answers a
        # flood of writes with the same few bytes. (Bounded: targets are
        # validated host names, hops <= 9, reasons a handful of strings.)
        key = (decision.kind, decision.target, decision.hops, decision.reason)
        reply = self._replies.get(key)
        if reply is None:
            if len(self._replies) >= _REPLY_MEMO_SIZE:
                self._replies.clear()
            reply = self._replies[key] = self._build_reply(decision)
        return reply

    def _build_reply(self, decision: Decision) -> Reply:
        if decision.kind is Kind.REPLAY:
            assert decision.target is not None
            body = (
                f"This request must run on the primary instance, {decision.target}.\n"
                "Fly's proxy replays it there when it sees the fly-replay header; if you are\n"
                "reading this, nothing did (local development or private-network traffic).\n"
            )
            extra = [(REPLAY_HEADER, f"instance={decision.target};state={replay_state(decision.hops)}")]
            return _text_reply(409, body, extra)
        if decision.kind is Kind.TOO_LARGE:
            body = (
                f"This write must run on the primary instance, {decision.target}, but {decision.reason}\n"
                "and Fly's proxy cannot replay it there. Send it to the primary directly\n"
                f"(header fly-force-instance-id: {decision.target}) or make it smaller.\n"
            )
            return _text_reply(413, body, [])
        if decision.kind is Kind.WAIT_FOR_PRIMARY:  # SETTLE: replaced once settled, see settle()
            decision = Decision(Kind.UNAVAILABLE, True, reason=NO_PRIMARY_REASON)
        if decision.kind is Kind.TIMEOUT:
            body = f"This write must run on the primary, but {decision.reason}. Send it again.\n"
            return _text_reply(408, body, [])
        if decision.kind is Kind.UNAVAILABLE:
            body = f"This write cannot run now: {decision.reason}. Retry shortly.\n"
            return _text_reply(503, body, [("Retry-After", str(self.retry_after))])
        raise ValueError(f"no reply for {decision.kind}")


# SQLITE_READONLY (8) in rollback mode, SQLITE_IOERR (10) in WAL mode: what
# a write on a LiteFS replica fails with (primary result code = low byte).
_READONLY_CODES = {8, 10}
_READONLY_MESSAGES = ("attempt to write a readonly database", "disk I/O error")


def is_readonly_error(exc: BaseException) -> bool:
    """True if *exc* is, or wraps, SQLite refusing a write on a replica.

    Follows ``__cause__``/``__context__`` and SQLAlchemy's ``.orig``, so
    Django's and SQLAlchemy's wrappers are recognised too.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        code = getattr(e, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _READONLY_CODES:
            return True
        if type(e).__name__ == "OperationalError" and any(m in str(e) for m in _READONLY_MESSAGES):
            return True
        orig = getattr(e, "orig", None)
        todo += [e.__cause__, e.__context__, orig if isinstance(orig, BaseException) else None]
    return False


def _text_reply(status: int, body: str, extra: list[tuple[str, str]]) -> Reply:
    # No Cache-Control: 409, 413 and 503 are not cacheable without explicit
    # freshness (RFC 9111 4.2.2), and every header costs the server real work
    # (h11 validates each one: ~16k instructions, measured in bench/).
    data = body.encode()
    headers = [*extra, ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    return Reply(status, tuple(headers), data)


class RouterOptions(TypedDict, total=False):
    """The keyword options of :class:`Router`, as the middlewares take them."""

    litefs_dir: str | os.PathLike[str] | None
    instance_id: str | None
    write_on_read: Iterable[str]
    passthrough: Iterable[str]
    cache_ttl: float
    primary_wait: float
    max_replays: int
    replay_body_limit: int
    body_timeout: float
    retry_after: int
    database: str | None
    consistency_wait: float
    txid_cookie_max_age: int
    txid_cookie_secure: bool


AppT = TypeVar("AppT")


class RoutingMiddleware(Generic[AppT]):
    """The part of the WSGI and ASGI middlewares that is the same.

    ``Middleware(app, **options)``; options are :class:`Router`'s. A
    ready-made ``router=`` may be passed instead, to share one node-state
    cache between several middlewares of one process.
    """

    def __init__(self, app: AppT, *, router: Router | None = None, **options: Unpack[RouterOptions]) -> None:
        if router is not None and options:
            raise TypeError("pass either router= or options, not both")
        self.app = app
        self.router = router or Router(**options)
        self._setup()

    def _setup(self) -> None:
        """Adapter-specific set-up, after the router exists."""
