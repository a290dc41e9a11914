"""The routing: one middleware's rules, node state and memoised replies.

A :class:`NodeRouting` is what the WSGI and ASGI middlewares share, built from
their options once (see :class:`~litefs_route._middleware.RoutingMiddleware`).
It does no I/O itself: it hands out the plans of :mod:`litefs_route._decision`
and the objects the drivers' I/O goes through (the :class:`StateCache` of
the mount, the :class:`~litefs_route._consistency.Positions` of the databases' TXIDs).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable

from ._consistency import Positions, TxidCookies
from ._counters import Counters
from ._decision import decide, decide_without_io
from ._forwarding import (
    DEFAULT_FORWARD_URL,
    ForwardURL,
    OutgoingForward,
    client_address,
    forwarded_headers,
    resolve_forward_url,
)
from ._log_fields import RawHeaders, log_fields, request_fields
from ._mount import NodeState
from ._needs import Plan
from ._plans import plan_request, plan_settlement
from ._replay_latency import replay_latency
from ._replies import Headers, Reply, build_reply, build_tags, forward_failure_reply
from ._request import RequestInfo
from ._rules import Rules
from ._sqlite_errors import WriteFailure, WriteFailureKind, classify_write_failure
from ._state_cache import PUSHED, StateCache
from ._subscriber import EventSubscriber
from ._verdicts import Decision, Kind, Outcome, Pending, counter_name

__all__ = ["NodeRouting", "every_routing"]

logger = logging.getLogger("litefs_route")

# Seconds between two warnings of one kind (the rest at DEBUG).
_WARN_EVERY = 60.0
# Distinct replies remembered by NodeRouting.reply().
_REPLY_MEMO_SIZE = 64
# An enum member read once: reading Kind.REPLAY costs hundreds of instructions each time on Python 3.11.
_REPLAY = Kind.REPLAY
# Distinct (method, path) verdicts remembered by NodeRouting.route() for one reading of the mount.
_VERDICT_MEMO_SIZE = 512


class NodeRouting:
    """The rules, the node state and the replies of one or more middlewares.

    Share one between middlewares of one process (``routing=mw.routing``) to
    share its reading of the mount.
    """

    def __init__(
        self,
        *,
        instance_id: str,
        rules: Rules,
        cache: StateCache,
        positions: Positions | None,
        txid_cookies: TxidCookies | None,
        retry_after: int,
        replay_timeout: float | None = None,
        forward_url: ForwardURL = DEFAULT_FORWARD_URL,
        forward_timeout: float = 30.0,
        subscriber: EventSubscriber | None = None,
        classify_failure: Callable[[BaseException], WriteFailure | None] = classify_write_failure,
    ) -> None:
        self.instance_id = instance_id
        self.rules = rules
        #: The reading of the mount, shared by every request.
        self.cache = cache
        #: The read-your-writes watchers, one per database; None when read-your-writes is off.
        self.positions = positions
        #: The read-your-writes cookies, one per database; None when read-your-writes is off.
        self.txid_cookies = txid_cookies
        #: What pushes LiteFS's events into the cache and the watcher; None when off.
        self.subscriber = subscriber
        self.retry_after = retry_after
        #: fly-replay's ``timeout`` (with ``fallback=force_self``), None: not sent.
        self.replay_timeout = replay_timeout
        #: Forward mode: where the primary answers (a template or a callable), and how long it may take.
        self.forward_url = forward_url
        self.forward_timeout = forward_timeout
        #: What a failed write proves (the source's answer): the safety net's test.
        self.classify_failure = classify_failure
        #: What its requests ended in, and how long they waited (:mod:`litefs_route._counters`).
        self.counters = Counters()
        #: (reading, its tags): tags are built once per reading of the mount (:meth:`tags`);
        #: a hot path tests it inline, without the call.
        self.last_tags: tuple[NodeState | None, Headers] = (None, ())
        self._replies: dict[Decision, Reply] = {}
        # A reading, and method -> path -> the RequestInfo and Outcome of a request with no routing headers
        # on it (two plain lookups cost less than hashing a (method, path) key).
        self._verdicts: tuple[NodeState | None, dict[str, dict[str, tuple[RequestInfo, Outcome]]]] = (None, {})
        self._warned_at: dict[str, float] = {}
        with _EVERY_LOCK:
            _EVERY[next(_CREATED)] = self

    # -- deciding -----------------------------------------------------------

    def route(self, method: str, path: str, request: RequestInfo | None) -> tuple[RequestInfo, Outcome | Plan]:
        """How to route a request: its outcome if it needs no I/O, else the plan to drive; with its RequestInfo.

        *request* None: it carries none of the headers routing reads
        (:func:`~litefs_route._request.from_environ`). Its verdict then
        depends on its method and path alone, for a given reading of the
        mount and these rules: it is worked out once and remembered until
        the reading changes. Most requests take that path; the rules still
        decide every verdict (:func:`~litefs_route._decision.decide`).
        """
        if request is not None:
            outcome = self.outcome_without_io(request)
            return request, self.plan(request) if outcome is None else outcome
        cache = self.cache
        verdicts: dict[str, dict[str, tuple[RequestInfo, Outcome]]] | None
        state, verdicts = self._verdicts
        # cache.fresh()'s own test, without the call: the memo's reading is still the routable one.
        # A pushed reading (the event stream's) never expires: no clock to read then.
        until = cache.routable_until
        if state is not cache.routable or (until != PUSHED and cache.clock() >= until):
            state = cache.fresh()
            if state is None:
                verdicts = None
            else:
                # One attribute holds the reading and its verdicts: a thread that swaps
                # them can never pair another thread's reading with stale verdicts.
                memo_state, verdicts = self._verdicts
                if memo_state is not state:
                    verdicts = {}
                    self._verdicts = (state, verdicts)
        if verdicts is not None:
            try:
                return verdicts[method][path]
            except KeyError:  # first seen under this reading
                pass
        request = RequestInfo(method, path)
        outcome = decide_without_io(request, state, self.rules)
        if outcome is None or verdicts is None:
            return request, self.plan(request)
        if sum(map(len, verdicts.values())) >= _VERDICT_MEMO_SIZE:  # methods and paths are client input: bounded
            verdicts.clear()
        by_path = verdicts.get(method)
        if by_path is None:
            by_path = verdicts[method] = {}
        routed = by_path[path] = (request, outcome)
        return routed

    def plan(self, request: RequestInfo) -> Plan:
        """The plan that routes *request* (drive it with :mod:`litefs_route._drivers`)."""
        if request.replay_src is not None and self.counters.listened:  # a replayed request: never without I/O
            latency = replay_latency(request.replay_src, time.time())
            if latency is not None:
                self.counters.time("replay_latency", latency)
        return plan_request(request, self.rules, known_txids=self.known_txids(request))

    def settlement(
        self, request: RequestInfo, *, failure: WriteFailureKind | None = None, routed_as_primary: bool = False
    ) -> Plan:
        """The plan that ends a request that ran here but must end on the primary (see :func:`plan_settlement`)."""
        return plan_settlement(request, self.rules, failure=failure, routed_as_primary=routed_as_primary)

    def outcome_without_io(self, request: RequestInfo) -> Outcome | None:
        """The plan's outcome if it needs no I/O at all (the cached reading is fresh), else None."""
        known_txids = None if request.txids is None else self.known_txids(request)
        return decide_without_io(request, self.cache.fresh(), self.rules, known_txids=known_txids)

    def decide_forced(self, request: RequestInfo, state: NodeState) -> Decision | Pending:
        """The answer for a handler that called ``ensure_primary()``."""
        return decide(request, state, self.rules, forced=True)

    def known_txids(self, request: RequestInfo | None = None) -> tuple[int | None, ...] | None:
        """Each database's TXID as last seen (no I/O); None when off, or when *request* carries no TXID cookie."""
        positions = self.positions
        if positions is None or (request is not None and request.txids is None):
            return None
        return positions.known()

    # -- responses ----------------------------------------------------------

    def tags(self, state: NodeState) -> Headers:
        """The headers every response carries (built once per reading of the mount)."""
        last_state, tags = self.last_tags
        if state is not last_state:
            tags = build_tags(state)
            self.last_tags = (state, tags)
        return tags

    def reply(
        self,
        decision: Decision,
        request: RequestInfo | None = None,
        raw_headers: RawHeaders | None = None,
        *,
        cause: str = "write",
    ) -> Reply:
        """The response for a decision that does not run the app (counted; *cause*: what asked for a replay).

        *request*, *raw_headers* (as its server gave them): the request it
        answers, for the log record of an answer worth a warning.
        """
        name = counter_name(decision)
        counters = self.counters
        counters.add(name, cause=cause)
        if counters.listened and decision.kind is _REPLAY:  # metrics on: where it went (a span's attribute)
            counters.observe("replay_target", decision.target)
        if name == "unavailable_replay_failed":  # the primary is out of Fly's reach: worth a look
            self._warn(name, f"answered 503: {decision.reason}", 503, decision, request, raw_headers)
        elif name == "forbidden_forwards":  # a forgery, or instances that do not share one forward_secret
            message = "answered 403 to a request that claims to be forwarded without this instance's secret"
            self._warn(name, message, 403, decision, request, raw_headers)
        # Built once per distinct decision: a replica answers a flood of
        # writes with the same few bytes. (Bounded: targets are validated host
        # names, hops <= 9, reasons a handful of strings.)
        reply = self._replies.get(decision)
        if reply is None:
            if len(self._replies) >= _REPLY_MEMO_SIZE:
                self._replies.clear()
            reply = self._replies[decision] = build_reply(decision, self.retry_after, self.replay_timeout)
        return reply

    def prepare_forward(
        self,
        request: RequestInfo,
        decision: Decision,
        headers: Iterable[tuple[str, str]],
        *,
        client: str | None,
        scheme: str,
        chunked: bool,
        server: str | None = None,
    ) -> OutgoingForward | Reply:
        """How to forward *request* on a FORWARD *decision* (counted); or the reply if ``forward_url`` fails.

        *chunked*: the body's length is unknown (the adapter knows what its
        server's framing means), so it is sent chunked; else it is the
        request's ``Content-Length`` (none: no body). *server*: the
        ``host[:port]`` the request reached, the ``Host`` of one sent without
        (HTTP/1.0); None: the primary's address.
        """
        assert decision.target is not None  # FORWARD names the primary
        assert self.rules.forward_secret is not None  # forward mode refuses to start without one
        self.counters.add("forwards")
        length = None if chunked else (request.content_length or 0)
        try:
            target = resolve_forward_url(self.forward_url, decision.target)
        except ValueError as exc:  # a forward_url callable that gave no http URL
            self.counters.add("forward_failures")
            return forward_failure_reply(decision.target, False, str(exc), self.retry_after)
        forwarded = forwarded_headers(
            headers,
            client=client_address(client),
            scheme=scheme,
            hop=decision.hops,
            content_length=length,
            default_host=server or f"{target.host}:{target.port}",
        )
        secret = self.rules.forward_secret
        return OutgoingForward(target, forwarded, secret, chunked, length, self.forward_timeout, self.retry_after)

    def _warn(
        self,
        kind: str,
        message: str,
        status: int,
        decision: Decision,
        request: RequestInfo | None,
        raw_headers: RawHeaders | None,
    ) -> None:
        """Log *message* as a warning at most once a minute per *kind* (a client can send these at will)."""
        facts = log_fields(
            event=kind,
            reason=decision.reason,
            target=decision.target,
            status=status,
            **(request_fields(request, raw_headers) if request is not None else {}),
        )
        now = time.monotonic()
        if now - self._warned_at.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned_at[kind] = now
            logger.warning("%s (logged at most once a minute; routing.counters counts each)", message, extra=facts)
        else:
            logger.debug("%s", message, extra=facts)

    def __repr__(self) -> str:
        return f"NodeRouting(instance_id={self.instance_id!r}, litefs_dir={self.cache.litefs_dir!r})"


# Every NodeRouting of this process by creation, for metrics read when scraped; gone with their middleware.
_EVERY: weakref.WeakValueDictionary[int, NodeRouting] = weakref.WeakValueDictionary()
_EVERY_LOCK = threading.Lock()  # a scrape may list them while a first request builds one
_CREATED = itertools.count()


def every_routing() -> list[NodeRouting]:
    """The routings of this process, oldest first (the metrics read their state when scraped)."""
    with _EVERY_LOCK:
        return [routing for _, routing in sorted(_EVERY.items())]
