"""The router: one middleware's rules, node state and memoised replies.

A :class:`Router` is what the WSGI and ASGI middlewares share, built from
their options once (see :class:`~litefs_route.middleware.RoutingMiddleware`).
It does no I/O itself: it hands out the plans of :mod:`litefs_route.decision`
and the objects the drivers' I/O goes through (the :class:`StateCache` of
the mount, the :class:`PositionWatcher` of the database's TXID).
"""

from __future__ import annotations

from .consistency import PositionWatcher
from .decision import (
    Decision,
    Outcome,
    Pending,
    Plan,
    RequestInfo,
    Rules,
    decide,
    decide_without_io,
    plan_request,
    plan_settlement,
)
from .mount import NodeState
from .replies import Headers, Reply, build_reply, build_tags, txid_cookie_headers
from .state_cache import StateCache
from .subscriber import EventSubscriber

__all__ = ["Router"]

# Distinct replies remembered by Router.reply().
_REPLY_MEMO_SIZE = 64


class Router:
    """The rules, the node state and the replies of one or more middlewares.

    Share one between middlewares of one process (``router=mw.router``) to
    share its reading of the mount.
    """

    def __init__(
        self,
        *,
        instance_id: str,
        rules: Rules,
        cache: StateCache,
        positions: PositionWatcher | None,
        retry_after: int,
        txid_cookie_attributes: str,
        subscriber: EventSubscriber | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.rules = rules
        #: The reading of the mount, shared by every request.
        self.cache = cache
        #: The read-your-writes watcher; None when read-your-writes is off.
        self.positions = positions
        #: What pushes LiteFS's events into the cache and the watcher; None when off.
        self.subscriber = subscriber
        self.retry_after = retry_after
        self.txid_cookie_attributes = txid_cookie_attributes
        # (reading, its tags): tags are built once per reading of the mount.
        self._last_tags: tuple[NodeState | None, Headers] = (None, ())
        self._replies: dict[Decision, Reply] = {}

    # -- deciding -----------------------------------------------------------

    def plan(self, request: RequestInfo) -> Plan:
        """The plan that routes *request* (drive it with :mod:`litefs_route.drivers`)."""
        return plan_request(request, self.rules, known_txid=self._known_txid(request))

    def settlement(self, request: RequestInfo) -> Plan:
        """The plan that ends a request that ran here but must end on the primary."""
        return plan_settlement(request, self.rules)

    def outcome_without_io(self, request: RequestInfo) -> Outcome | None:
        """The plan's outcome if it needs no I/O at all (the cached reading is fresh), else None."""
        known_txid = None if request.txid is None else self._known_txid(request)
        return decide_without_io(request, self.cache.fresh(), self.rules, known_txid=known_txid)

    def decide_forced(self, request: RequestInfo, state: NodeState) -> Decision | Pending:
        """The answer for a handler that called ``ensure_primary()``."""
        return decide(request, state, self.rules, forced=True)

    def _known_txid(self, request: RequestInfo) -> int | None:
        positions = self.positions
        return positions.last_known if positions is not None and request.txid is not None else None

    # -- responses ----------------------------------------------------------

    def tags(self, state: NodeState) -> Headers:
        """The headers every response carries (built once per reading of the mount)."""
        last_state, tags = self._last_tags
        if state is not last_state:
            tags = build_tags(state)
            self._last_tags = (state, tags)
        return tags

    def reply(self, decision: Decision) -> Reply:
        """The response for a decision that does not run the app."""
        # Built once per distinct decision: a replica answers a flood of
        # writes with the same few bytes. (Bounded: targets are validated host
        # names, hops <= 9, reasons a handful of strings.)
        reply = self._replies.get(decision)
        if reply is None:
            if len(self._replies) >= _REPLY_MEMO_SIZE:
                self._replies.clear()
            reply = self._replies[decision] = build_reply(decision, self.retry_after)
        return reply

    def txid_cookie_headers(self, txid: int | None, clear: bool) -> list[tuple[str, str]]:
        """``Set-Cookie`` headers: the TXID after a write, or the clearing one."""
        return txid_cookie_headers(txid, clear, self.txid_cookie_attributes)

    def __repr__(self) -> str:
        return f"Router(instance_id={self.instance_id!r}, litefs_dir={self.cache.litefs_dir!r})"
