"""Primary routing for ASGI apps (Starlette, FastAPI, Django's ASGI, Quart).

::

    from starlette.middleware import Middleware
    from litefs_route.asgi import PrimaryRoutingMiddleware
    app = Starlette(routes=..., middleware=[Middleware(PrimaryRoutingMiddleware, write_on_read=["/session/refresh"])])

    # or around any ASGI app
    app = PrimaryRoutingMiddleware(app)

Pure ASGI (no Starlette import): ``http`` scopes are routed; ``lifespan``
scopes, and ``websocket`` scopes outside ``write_sockets``, pass straight
through. Response headers are added by wrapping ``send``; body messages are
forwarded one by one, never buffered.

The event loop never waits on the mount: the node's state is pushed by
LiteFS's event stream where it is up (:mod:`litefs_route._subscriber`), and a
refresh from the mount (at most once per ``cache_ttl``, or for a replayed
request, while the stream is not followed) runs in a worker
thread, through anyio when it is installed (Starlette, FastAPI) and
``asyncio.to_thread`` otherwise. Options: see :class:`~litefs_route._middleware.RoutingMiddleware`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import quote

from ._consistency import TxidCookies
from ._context import RequestContext, current_request
from ._drivers import AsyncMountIO, KeptBody, async_backend, drive_async
from ._forwarding import HOP_HEADER, SECRET_HEADER, forward_async
from ._frameworks import starlette_primary_required
from ._middleware import RoutingMiddleware, middleware_doc
from ._mount import NodeState
from ._replies import OUR_TAG_NAMES_BYTES, Headers, Reply, with_tags
from ._request import RequestInfo
from ._router import Router
from ._verdicts import Kind, Outcome

__all__ = ["SOCKET_REFUSED_CLOSE_CODE", "PrimaryRoutingMiddleware"]

_SECRET_HEADER_BYTES = SECRET_HEADER.encode()
_HOP_HEADER_BYTES = HOP_HEADER.encode()
_FORWARD_HEADERS = frozenset({_SECRET_HEADER_BYTES, _HOP_HEADER_BYTES})

#: The close code of a write-socket refused on a replica by a server without
#: ``websocket.http.response`` (1013, "try again later"; sent before the
#: handshake, so most servers answer it with a 403).
SOCKET_REFUSED_CLOSE_CODE = 1013

logger = logging.getLogger("litefs_route")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]


class PrimaryRoutingMiddleware(RoutingMiddleware[ASGIApp]):
    __doc__ = middleware_doc("ASGI middleware that routes writes to the LiteFS primary.")

    primary_required_error = staticmethod(starlette_primary_required)

    def _setup(self) -> None:
        # Encoded once per reading of the mount / per reply, not per request.
        self._last_tags: tuple[Headers, RawHeaders] = ((), [])
        self._last_reply: tuple[Reply | None, Headers, RawHeaders] = (None, (), [])
        self._routes_sockets = bool(self.router.rules.write_sockets.patterns)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket" and self._routes_sockets:
                await self.route_socket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        router = self.router
        request = _request_info(scope, router.txid_cookies)
        outcome = router.outcome_without_io(request)
        io = None
        if outcome is None:
            io = _AsyncIO(router, receive)
            outcome = await drive_async(router.plan(request), io)
        if outcome.decision.kind is not Kind.RUN:
            if outcome.decision.kind is Kind.FORWARD:
                await self.forward(scope, receive, send, request, outcome, io.kept if io is not None else KeptBody())
            else:
                await self.send_reply(send, router.reply(outcome.decision), outcome.state)
            return
        if request.forward_claim is not None:  # a genuine forwarded request: the secret is not the app's business
            scope = _without_forward_claim(scope)

        ctx = RequestContext(
            router, request, outcome.state, outcome.decision, self.primary_required_error, outcome.clear_txids
        )
        if outcome.decision.write:  # before the app: its cookies name the databases it changes
            ctx.note_write()
        response = _Response(self, ctx, receive, send)
        token = current_request.set(ctx)
        try:
            await self.app(scope, receive, response.send)
        except Exception as exc:
            if not ctx.ends_on_exception(exc):
                if not ctx.response_started:  # it ran, and failed: the server answers 500
                    router.counters.observe("ran")
                raise
            await response.send_ending()
            return
        finally:
            current_request.reset(token)
        if ctx.must_end_elsewhere and ctx.ends_without_response():
            await response.send_ending()

    async def route_socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake: on a ``write_sockets`` path, held by the primary or answered with the replay."""
        router = self.router
        request = _request_info(scope, None, websocket=True)
        outcome = router.outcome_without_io(request)
        if outcome is None:
            outcome = await drive_async(router.plan(request), _AsyncIO(router, receive))
        if outcome.decision.kind is Kind.RUN:
            if request.forward_claim is not None:  # a genuine forwarded handshake: not the app's business
                scope = _without_forward_claim(scope)
            await self.app(scope, receive, send)
            return
        reply = router.reply(outcome.decision)
        if (await receive())["type"] != "websocket.connect":
            return  # the client is gone
        if "websocket.http.response" in (scope.get("extensions") or {}):
            headers = with_tags(_encode(reply.headers), self.raw_tags(outcome.state), OUR_TAG_NAMES_BYTES)
            await send({"type": "websocket.http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": reply.body})
            return
        # Never accepted here: its writes would fail on this replica.
        logger.warning(
            "refused the WebSocket %s with close code %d: it must be opened on the primary, and this ASGI "
            "server cannot answer a handshake with the replay (no websocket.http.response extension)",
            request.path,
            SOCKET_REFUSED_CLOSE_CODE,
        )
        await send({"type": "websocket.close", "code": SOCKET_REFUSED_CLOSE_CODE})

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, request: RequestInfo, outcome: Outcome, kept: KeptBody
    ) -> None:
        """Send the request to the primary ourselves (forward mode) and relay its answer, streaming."""
        router = self.router
        client, server = scope.get("client"), scope.get("server")
        forward = router.forward(
            request,
            outcome.decision,
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope.get("headers", ())],
            client=client[0] if client else None,
            scheme=scope.get("scheme", "http"),
            chunked=request.content_length is None,  # HTTP/2 may send a body with neither header
            server=f"{server[0]}:{server[1]}" if server and server[1] is not None else None,
        )
        if isinstance(forward, Reply):
            await self.send_reply(send, forward, outcome.state)
            return

        async def reply(failure: Reply) -> None:
            router.counters.add("forward_failures")
            await self.send_reply(send, failure, outcome.state)

        raw_path = scope.get("raw_path") or quote(scope["path"]).encode("latin-1")
        query = scope.get("query_string", b"")
        await forward_async(
            forward,
            request.method,
            (raw_path + (b"?" + query if query else b"")).decode("latin-1"),
            kept.chunks,
            None if kept.ended else receive,
            send,
            reply,
        )

    def raw_tags(self, state: NodeState) -> RawHeaders:
        """The tag headers for *state*, encoded (once per reading of the mount)."""
        tags = self.router.tags(state)
        last, raw = self._last_tags
        if tags is not last:
            raw = _encode(tags)
            self._last_tags = (tags, raw)
        return raw

    async def send_reply(self, send: Send, reply: Reply, state: NodeState) -> None:
        """Answer with one of the middleware's own replies."""
        tags = self.router.tags(state)
        last_reply, last_tags, headers = self._last_reply
        if reply is not last_reply or tags is not last_tags:
            headers = with_tags(_encode(reply.headers), self.raw_tags(state), OUR_TAG_NAMES_BYTES)
            self._last_reply = (reply, tags, headers)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})


class _Response:
    """One request's response: tags it, adds the TXID cookie, or replaces it with the ending."""

    __slots__ = ("ctx", "middleware", "receive", "replaced", "send_downstream")

    def __init__(self, middleware: PrimaryRoutingMiddleware, ctx: RequestContext, receive: Receive, send: Send) -> None:
        self.middleware = middleware
        self.ctx = ctx
        self.receive = receive
        self.send_downstream = send
        #: The app's response was replaced by the ending: drop the rest of it.
        self.replaced = False

    async def send(self, message: Message) -> None:
        if self.replaced:
            return
        if message["type"] == "http.response.start":
            ctx = self.ctx
            if not ctx.must_end_elsewhere:  # its answer stands (unless replaced below): it ran
                ctx.router.counters.observe("ran")
            ctx.response_started = True
            headers: Iterable[tuple[bytes, bytes]] = message.get("headers", ())
            if ctx.must_end_elsewhere:
                headers = list(headers)  # read twice; ASGI allows a one-shot iterable
                if ctx.replaces_response(headers):
                    self.replaced = True
                    await self.send_ending()
                    return
            tagged = with_tags(headers, self.middleware.raw_tags(ctx.state), OUR_TAG_NAMES_BYTES)
            router = ctx.router
            if router.rules.read_your_writes:  # a cookie may be due
                tagged += _encode(ctx.cookie_headers(await self._read_txids()))
            message = {**message, "headers": tagged}
        await self.send_downstream(message)

    async def send_ending(self) -> None:
        """Answer with the reply the request must end in (the app's response never started)."""
        ctx = self.ctx
        settlement = ctx.settlement()
        if settlement is None:
            assert ctx.ending is not None
            reply = ctx.ending
        else:
            reply = ctx.settle(await drive_async(settlement, _AsyncIO(ctx.router, self.receive)))
        await self.middleware.send_reply(self.send_downstream, reply, ctx.state)

    async def _read_txids(self) -> tuple[int | None, ...] | None:
        # Read after the handler ran (the TXIDs must include its writes), off the loop.
        positions = self.ctx.router.positions
        if positions is None or not self.ctx.txid_cookie_due():
            return None
        run_in_thread, _ = async_backend()
        txids: tuple[int | None, ...] = await run_in_thread(positions.read)
        return txids


class _AsyncIO(AsyncMountIO):
    """The I/O of a plan, off the event loop: mount reads in a worker thread."""

    __slots__ = ("receive",)

    def __init__(self, router: Router, receive: Receive) -> None:
        super().__init__(router)
        self.receive = receive

    async def measure_body(self, limit: int, timeout: float) -> int | None:
        return await _measure_body(self.receive, limit, timeout, self.keeper())


def _without_forward_claim(scope: Scope) -> Scope:
    """*scope* without a forwarded request's secret and hop count: they are not the app's business."""
    return {**scope, "headers": [h for h in scope.get("headers", ()) if h[0] not in _FORWARD_HEADERS]}


def _request_info(scope: Scope, txid_cookies: TxidCookies | None, *, websocket: bool = False) -> RequestInfo:
    replay_src = content_length = transfer_encoding = replay_failed = forward_claim = forward_hop = None
    cookies: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            cookies.append(value.decode("latin-1"))
        elif name == b"fly-replay-src":
            replay_src = value.decode("latin-1")
        elif name == b"fly-replay-failed":
            replay_failed = value.decode("latin-1")
        elif name == _SECRET_HEADER_BYTES:
            forward_claim = value.decode("latin-1")
        elif name == _HOP_HEADER_BYTES:
            forward_hop = value.decode("latin-1")
        elif name == b"content-length":
            content_length = value.decode("latin-1")
        elif name == b"transfer-encoding":
            transfer_encoding = value.decode("latin-1")
    return RequestInfo.from_headers(
        scope.get("method", "GET"),  # a websocket scope has none: its handshake is a GET
        scope["path"],
        replay_src=replay_src,
        content_length=content_length,
        transfer_encoding=transfer_encoding,
        cookie="; ".join(cookies) or None,  # HTTP/2 may split the header
        txid_cookies=txid_cookies,
        replay_failed=replay_failed,
        websocket=websocket,
        forward_claim=forward_claim,
        forward_hop=forward_hop,
    )


def _encode(headers: Iterable[tuple[str, str]]) -> RawHeaders:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def _measure_body(receive: Receive, limit: int, timeout: float, keep: KeptBody | None) -> int | None:
    """The body's size (reading at most *limit* + 1 bytes), or None if it took over *timeout* seconds."""
    try:
        import anyio
    except ImportError:
        import asyncio

        try:
            return await asyncio.wait_for(_count_body(receive, limit, keep), timeout)
        except asyncio.TimeoutError:
            return None
    with anyio.move_on_after(timeout):
        return await _count_body(receive, limit, keep)
    return None


async def _count_body(receive: Receive, limit: int, keep: KeptBody | None) -> int:
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] != "http.request":
            break  # http.disconnect: the client is gone
        body = message.get("body", b"")
        size += len(body)
        more = message.get("more_body", False)
        if keep is not None:
            keep.chunks.append(body)
            keep.ended = not more
        if not more:
            break
    return size
