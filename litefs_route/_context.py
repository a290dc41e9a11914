"""Per-request state, and the functions handlers call.

The middleware puts a :class:`RequestContext` in a ``ContextVar`` for the
duration of the app call. Handlers reach it with no arguments, in sync and
async code alike: Starlette/FastAPI worker threads (``anyio.to_thread``) and
Flask's async views run in a *copy* of the request's context, so they see the
same object, and what they set on it (never a rebinding of the variable)
reaches the middleware. ``loop.run_in_executor`` and a bare
``threading.Thread`` do not copy the context: call ``ensure_primary()`` in
the request's own task or thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import AnyStr

from ._decision import decide_instance, sets_txid_cookie
from ._events import read_candidate
from ._exceptions import PrimaryRequired
from ._log_fields import RawHeaders, log_fields, request_fields
from ._mount import NodeState, Role, default_instance_id, is_valid_instance_id, read_node_state
from ._needs import Plan
from ._postgres_source import region_state_from_env
from ._replies import STAND_IN, Reply, has_replay_header
from ._request import RequestInfo
from ._routing import NodeRouting
from ._sqlite_errors import WriteFailure
from ._subscriber import resolve_api_url
from ._verdicts import Decision, Kind, Outcome, Pending, assert_never

__all__ = [
    "InstanceInfo",
    "RequestContext",
    "current_request",
    "ensure_instance",
    "ensure_primary",
    "get_instance_info",
    "report_exception",
]

logger = logging.getLogger("litefs_route")


class RequestContext:
    """One request the app runs: what it was routed on, and how it must end.

    Built by every adapter right before its app runs, from the request's
    routing :class:`~litefs_route._verdicts.Outcome` (a RUN decision).
    """

    # A slotted class with its own __init__: one is built on every request, and each field
    # set costs. What most requests never change is a class default (the __dict__ takes
    # the rare values): the ending, the safety net's failure, the TXIDs before a write.
    __slots__ = (
        "__dict__",
        "clear_txids",
        "decision",
        "must_end_elsewhere",
        "request",
        "response_started",
        "routing",
        "state",
    )

    #: Each database's TXID when the request became a write (see :meth:`note_write`).
    txids_before: tuple[int | None, ...] | None = None
    #: The reply ``must_end_elsewhere`` ends in, when known; None while it must still be
    #: settled (no primary was known, or the database failed the write; see
    #: :func:`~litefs_route._plans.plan_settlement`).
    ending: Reply | None = None
    #: How the database failed the write because of LiteFS (the safety net's case), if it did.
    failure: WriteFailure | None = None

    def __init__(self, routing: NodeRouting, request: RequestInfo, outcome: Outcome) -> None:
        self.routing = routing
        self.request = request
        #: The reading it was routed on, or the fresher one it was settled on.
        self.state: NodeState = outcome.state
        #: The RUN decision it was routed on (``ensure_primary()`` on the primary makes it a write).
        self.decision: Decision = outcome.decision
        #: The databases (indexes) whose TXID cookie is ahead of this primary: clear those cookies.
        self.clear_txids: tuple[int, ...] = outcome.clear_txids
        #: The app's response has begun (it can no longer be replaced).
        self.response_started = False
        #: ``ensure_primary()`` on a non-primary, ``ensure_instance()`` on another
        #: instance, or the safety net: the request ends in a replay (or a
        #: refusal) whatever the app answers.
        self.must_end_elsewhere = False
        if outcome.decision.write:  # before the app: its cookies name the databases it changes
            self.note_write()

    @staticmethod
    def primary_required_error(reply: Reply) -> PrimaryRequired:
        """The exception ``ensure_primary()`` raises (each adapter's framework flavour)."""
        return PrimaryRequired(reply)

    def __repr__(self) -> str:
        return f"<RequestContext {self.request.method} {self.request.path[:200]!r} {self.decision.kind.value}>"

    # -- what the middleware asks (the same for both adapters) ---------------

    def replaces_response(self, headers: Iterable[tuple[AnyStr, AnyStr]]) -> bool:
        """True if the app's response (with *headers*) must be replaced by the ending.

        ``ensure_primary()`` was called and the app answered something other
        than a replay (its error handler ate the exception).
        """
        return self.must_end_elsewhere and not has_replay_header(headers)

    def ends_on_exception(self, exc: BaseException) -> bool:
        """True if the request that raised *exc* ends in the middleware's own reply.

        Not once the response has started. A :class:`PrimaryRequired`
        always does (its reply becomes the ending if none was recorded);
        any exception after ``ensure_primary()``; and the safety net's case,
        SQLite refusing a write that slipped through (recorded and logged
        by :meth:`mark_readonly_failure`).
        """
        if self.response_started:
            return False
        if isinstance(exc, PrimaryRequired):
            if not self.must_end_elsewhere:  # raised by hand, or for another request
                self.must_end_elsewhere, self.ending = True, exc.reply
            return True
        return self.must_end_elsewhere or self.mark_readonly_failure(exc)

    def ends_without_response(self) -> bool:
        """True if the app returned without starting a response, and the request must end on the primary."""
        return self.must_end_elsewhere and not self.response_started

    def settlement(self) -> Plan | None:
        """The plan that decides the ending (drive it, then :meth:`settle`); None if the ending is known."""
        if self.ending is not None:
            return None
        # self.state is still the reading the request was routed on (settle() replaces it).
        return self.routing.settlement(
            self.request,
            failure=None if self.failure is None else self.failure.kind,
            routed_as_primary=self.state.is_primary,
        )

    def settle(self, outcome: Outcome) -> Reply:
        """Record the ending a settlement plan decided; returns its reply."""
        self.state = outcome.state
        # Settled here: SQLite refused a write (the safety net), or ensure_primary() found no primary.
        cause = "safety_net" if self.failure is not None else "ensure_primary"
        self.ending = self.routing.reply(outcome.decision, cause=cause, request=self.request)
        if self.failure is not None:
            self._log_failure(outcome)
        return self.ending

    def _log_failure(self, outcome: Outcome) -> None:
        failure, request, decision, ending = self.failure, self.request, outcome.decision, self.ending
        assert failure is not None
        assert ending is not None
        facts = request_fields(request, self.raw_headers())
        if decision.kind is Kind.OUTCOME_UNKNOWN:
            logger.warning(
                "%s %s may have run: %s (%s); answered %d with its outcome unknown, never replayed",
                request.method,
                request.path[:200],
                decision.reason,
                failure.detail,
                ending.status,
                extra=log_fields(event="outcome_unknown", reason=failure.detail, status=ending.status, **facts),
            )
            return
        # Routed to a replica by a stale reading, or LiteFS stopped being primary before the write.
        logger.warning(
            "%s %s did not run: the database refused its write on this instance (%s); answered %s",
            request.method,
            request.path[:200],
            failure.detail,
            f"with the replay to {decision.target}" if decision.kind is Kind.REPLAY else decision.kind.value,
            extra=log_fields(
                event="safety_net",
                reason=failure.detail,
                status=ending.status,
                target=decision.target if decision.kind is Kind.REPLAY else None,
                primary=outcome.state.primary_id,
                **facts,
            ),
        )

    def raw_headers(self) -> RawHeaders | None:
        """The request's headers as its server gave them, for a log record's request id (adapters that keep them)."""
        return None

    def note_write(self) -> None:
        """The request is a write about to run: remember the TXIDs it starts from (no I/O).

        The databases whose TXID moved by the end of the handler get a
        cookie. (While LiteFS's event stream is down the TXIDs known here may
        be older than the mount's: a database another request changed then
        gets a cookie too. Safe: a read waits a little more, never less.)
        """
        if self.txids_before is None:
            self.txids_before = self.routing.known_txids()

    def txid_cookie_due(self) -> bool:
        """True if the response gets fresh TXID cookies: read the positions after the handler ran."""
        return sets_txid_cookie(self.decision, self.state, self.routing.rules)

    def cookie_headers(self, txids_after: tuple[int | None, ...] | None) -> list[tuple[str, str]]:
        """``Set-Cookie`` headers: each database's TXID after the handler if it moved, or clearing stale ones."""
        cookies = self.routing.txid_cookies
        if cookies is None or (txids_after is None and not self.clear_txids):
            return []
        before = self.txids_before
        fresh = (
            ()
            if txids_after is None
            else tuple(txid if before is None or txid != before[i] else None for i, txid in enumerate(txids_after))
        )
        return cookies.headers(fresh, self.clear_txids)

    def mark_readonly_failure(self, exc: BaseException) -> bool:
        """The safety net: if SQLite failed a write because of LiteFS, the request ends in the middleware's reply.

        That reply is settled once the handler is done: a replay or a 503 if
        the write did not run, a 502 if it may have run
        (:mod:`litefs_route._sqlite_errors`). Logged then, once.
        """
        if self.must_end_elsewhere:
            return False
        failure = self.routing.classify_failure(exc)
        if failure is None:
            return False
        self.must_end_elsewhere, self.failure = True, failure
        self.routing.counters.add("safety_net")
        return True


#: The request being handled in this context (set by the middleware around the app call).
current_request: ContextVar[RequestContext | None] = ContextVar("litefs_route_request", default=None)


def _context(caller: str) -> RequestContext:
    ctx = current_request.get()
    if ctx is None:
        raise RuntimeError(
            f"litefs_route.{caller}() was called outside a request: install PrimaryRoutingMiddleware "
            "and call it from the request's own task or thread"
        )
    return ctx


def ensure_primary() -> None:
    """Return if this instance may write; else end the request in a replay.

    On the primary (or standalone) this returns and marks the request as a
    write. On a replica it raises :class:`PrimaryRequired`, and the request
    ends in the same 409 + ``fly-replay`` response the middleware gives a
    write, so Fly's proxy runs it again on the primary. When no primary is
    known it ends in 503 + ``Retry-After`` after waiting ``primary_wait`` for
    one (or the replay, if one appears); the exception then carries a 409
    stand-in the middleware replaces (never a 5xx, which error trackers
    report). Catching the exception does not cancel that: the middleware
    replaces whatever the app answers instead.

    Raises RuntimeError outside a request handled by the middleware.
    """
    ctx = _context("ensure_primary")
    step = ctx.routing.decide_forced(ctx.request, ctx.state)
    match step:
        case Decision(kind=Kind.RUN):  # the primary (or standalone): a write, run here
            ctx.decision = step
            ctx.note_write()
            return
        case Decision():  # the replay, or a refusal (413, 503 after too many replays)
            ctx.must_end_elsewhere, ctx.ending = (
                True,
                ctx.routing.reply(step, cause="ensure_primary", request=ctx.request),
            )
            raise ctx.primary_required_error(ctx.ending)
        case Pending.WAIT_FOR_PRIMARY:  # settled by the middleware once the handler is done
            ctx.must_end_elsewhere = True
            # A stand-in, not the 503 it may end in: a 5xx HTTP exception is an error to Sentry.
            raise ctx.primary_required_error(STAND_IN)
        case Pending.MEASURE_BODY | Pending.WAIT_FOR_TXID | Pending.CHECK_TXID | Pending.CHECK_HEALTH:
            raise AssertionError(f"a forced decision cannot be {step}")
        case _:
            assert_never(step)


def ensure_instance(instance_id: str) -> None:
    """Return if this is the instance *instance_id*; else end the request in a replay to it.

    For work that belongs to one instance (clearing that instance's cache,
    reading its local files), as litefs-js's ``ensureInstance``. On any other
    instance it raises :class:`PrimaryRequired`, and the request ends in
    ``409`` + ``fly-replay: instance=<instance_id>``, with the guarantees of
    :func:`ensure_primary`: the app's own answer is replaced even if it
    catches the exception, a request replayed ``max_replays`` times gets 503
    (the instance may be gone), and a body too large for Fly's proxy 413.

    Raises ValueError if *instance_id* is not a host name or Machine ID, and
    RuntimeError outside a request handled by the middleware.
    """
    if not isinstance(instance_id, str) or not is_valid_instance_id(instance_id):
        raise ValueError(f"instance_id must be a host name or Fly Machine ID, got {instance_id!r}")
    ctx = _context("ensure_instance")
    step = decide_instance(ctx.request, ctx.state, ctx.routing.rules, instance_id)
    if step is None:  # this is the instance
        return
    ctx.must_end_elsewhere, ctx.ending = True, ctx.routing.reply(step, cause="ensure_instance", request=ctx.request)
    raise ctx.primary_required_error(ctx.ending)


def report_exception(exc: object = None, /, **signal: object) -> bool:
    """Tell the middleware that the current request failed with *exc*.

    If *exc* is SQLite refusing a write because this node is not the primary
    after all, the request will end in a replay to the primary (or a 503)
    instead of the app's error response. Returns True if it will.

    The middleware calls this itself for exceptions that reach it, and the
    ``got_request_exception`` signal of a Flask app it wraps is connected to
    it. It is also a signal receiver as it is, for frameworks that turn
    exceptions into a 500 before the middleware sees them:
    ``got_request_exception.connect(report_exception)`` works as written in
    Flask (the exception comes as ``exception=``) and in Django (the
    exception being handled); a module-level function, so signals that hold
    weak references keep it. A safety net, not a substitute for
    ``ensure_primary()``: side effects before the failed write happened here.
    No I/O: the middleware settles it.
    """
    if not isinstance(exc, BaseException):  # called as a signal receiver: exc is the sender
        given = signal.get("exception")
        exc = given if isinstance(given, BaseException) else sys.exc_info()[1]
        if exc is None:
            return False
    ctx = current_request.get()
    return ctx is not None and ctx.mark_readonly_failure(exc)


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """Who this instance is and who is primary."""

    current_instance: str
    #: None when no primary is known.
    primary_instance: str | None
    is_primary: bool
    role: Role
    #: This instance's Fly region (``$FLY_REGION``); None off Fly.
    region: str | None = None
    #: Whether this instance may become primary (LiteFS's ``lease.candidate``); None when LiteFS's API did not say.
    candidate: bool | None = None


def get_instance_info(
    *, litefs_dir: str | None = None, instance_id: str | None = None, litefs_api_url: str | None = None
) -> InstanceInfo:
    """This instance and the primary.

    Inside a request handled by the middleware, with no arguments: the
    reading the request was routed on (no I/O), and ``candidate`` as LiteFS's
    API said when the middleware's event stream came up. Otherwise it reads
    the mount now (``litefs_dir``, default ``$LITEFS_DIR``) and asks LiteFS's
    API (``litefs_api_url``, default as the middleware's option) whether this
    node is a candidate, which blocks briefly (at most a second for the API).
    """
    ctx = current_request.get()
    if ctx is not None and litefs_dir is None and instance_id is None and litefs_api_url is None:
        state = ctx.state
        subscriber = ctx.routing.subscriber
        candidate = subscriber.candidate if subscriber is not None else None
    else:
        mount = litefs_dir or os.environ.get("LITEFS_DIR")
        me = instance_id or default_instance_id()
        by_region = None if mount else region_state_from_env(me)  # Postgres's regions, as the hooks follow them
        state = read_node_state(mount, me) if by_region is None else by_region
        api_url = resolve_api_url(litefs_api_url)
        candidate = None
        if mount and api_url is not None:
            with contextlib.suppress(OSError, ValueError):
                candidate = read_candidate(api_url, timeout=1.0)
    region = os.environ.get("FLY_REGION") or None
    return InstanceInfo(state.instance_id, state.primary_id, state.is_primary, state.role, region, candidate)
