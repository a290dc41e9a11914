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

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import quote

from ._context import RequestContext, current_request
from ._drivers import AsyncMountIO, KeptBody, async_backend, drive_async
from ._forwarding import forward_async
from ._frameworks import starlette_primary_required
from ._log_fields import log_fields, request_fields
from ._middleware import RoutingMiddleware, middleware_doc
from ._mount import NodeState
from ._replies import OUR_TAGS_BYTES, Headers, Reply
from ._request import HOP_HEADER, SECRET_HEADER, RequestInfo, from_asgi_headers, header_name, routing_header_names
from ._verdicts import Kind, Outcome

__all__ = ["SOCKET_REFUSED_CLOSE_CODE", "PrimaryRoutingMiddleware"]

_FORWARD_HEADERS = frozenset({SECRET_HEADER.encode(), HOP_HEADER.encode()})

#: The close code of a write-socket refused on a replica by a server without
#: ``websocket.http.response`` (1013, "try again later"; sent before the
#: handshake, so most servers answer it with a 403).
SOCKET_REFUSED_CLOSE_CODE = 1013

# Read once: reading an enum member costs about 1,000 instructions each time on Python 3.11.
_RUN = Kind.RUN

logger = logging.getLogger("litefs_route")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]


class PrimaryRoutingMiddleware(RoutingMiddleware[ASGIApp]):
    __doc__ = middleware_doc("ASGI middleware that routes writes to the LiteFS primary.")

    def _setup(self) -> None:
        # Encoded once per reading of the mount / per reply, not per request.
        self._last_tags: tuple[NodeState | None, RawHeaders] = (None, [])
        self._last_reply: tuple[Reply | None, Headers, RawHeaders] = (None, (), [])
        self._routes_sockets = bool(self.routing.rules.write_sockets.patterns)
        self._routing_names = routing_header_names(self.routing.txid_cookies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket" and self._routes_sockets:
                await self.route_socket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        routing = self.routing
        method, path = scope["method"], scope["path"]
        headers = scope.get("headers", ())
        # from_asgi_headers' test without its call: most requests carry nothing to parse (None).
        # Only for a GET: another method usually carries Content-Length, so the test would only add to its parse.
        if method == "GET" and type(headers) is list and self._routing_names.isdisjoint(map(header_name, headers)):
            parsed = None
        else:
            parsed = from_asgi_headers(method, path, headers, routing.txid_cookies)
        request, routed = routing.route(method, path, parsed)
        io = None
        if isinstance(routed, Outcome):
            outcome = routed
        else:
            io = AsyncMountIO(routing, functools.partial(_measure_body, receive))
            outcome = await drive_async(routed, io)
        if outcome.decision.kind is not _RUN:
            if outcome.decision.kind is Kind.FORWARD:
                kept = io.kept if io is not None else KeptBody()
                await self.relay_to_primary(scope, receive, send, request, outcome, kept)
            else:
                await self.send_reply(send, routing.reply(outcome.decision, request, headers), outcome.state)
            return
        if request.forward_claim is not None:  # a genuine forwarded request: the secret is not the app's business
            scope = _without_forward_claim(scope)

        ctx = _ASGIRequest(routing, request, outcome)
        ctx.middleware, ctx.receive, ctx.send_downstream, ctx.replaced = self, receive, send, False
        ctx.headers = headers
        token = current_request.set(ctx)
        try:
            await self.app(scope, receive, ctx.send)
        except Exception as exc:
            if not ctx.ends_on_exception(exc):
                if not ctx.response_started:  # it ran, and failed: the server answers 500
                    routing.counters.observe("ran")
                raise
            await ctx.send_ending()
            return
        finally:
            current_request.reset(token)
        if ctx.must_end_elsewhere and ctx.ends_without_response():
            await ctx.send_ending()

    async def route_socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake: on a ``write_sockets`` path, held by the primary or answered with the replay."""
        routing = self.routing
        method, path = "GET", scope["path"]  # a websocket scope has no method: its handshake is a GET
        headers = scope.get("headers", ())
        parsed = from_asgi_headers(method, path, headers, None, websocket=True)
        request, routed = routing.route(method, path, parsed)
        outcome = (
            routed
            if isinstance(routed, Outcome)
            else await drive_async(routed, AsyncMountIO(routing, functools.partial(_measure_body, receive)))
        )
        if outcome.decision.kind is Kind.RUN:
            if request.forward_claim is not None:  # a genuine forwarded handshake: not the app's business
                scope = _without_forward_claim(scope)
            await self.app(scope, receive, send)
            return
        reply = routing.reply(outcome.decision, request, headers)
        if (await receive())["type"] != "websocket.connect":
            return  # the client is gone
        if "websocket.http.response" in (scope.get("extensions") or {}):
            headers = OUR_TAGS_BYTES.tag(_encode(reply.headers), self.raw_tags(outcome.state))
            await send({"type": "websocket.http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": reply.body})
            return
        # Never accepted here: its writes would fail on this replica.
        logger.warning(
            "refused the WebSocket %s with close code %d: it must be opened on the primary, and this ASGI "
            "server cannot answer a handshake with the replay (no websocket.http.response extension)",
            request.path,
            SOCKET_REFUSED_CLOSE_CODE,
            extra=log_fields(
                event="socket_refused", target=outcome.decision.target, **request_fields(request, headers)
            ),
        )
        await send({"type": "websocket.close", "code": SOCKET_REFUSED_CLOSE_CODE})

    async def relay_to_primary(
        self, scope: Scope, receive: Receive, send: Send, request: RequestInfo, outcome: Outcome, kept: KeptBody
    ) -> None:
        """Send the request to the primary ourselves (forward mode) and relay its answer, streaming."""
        routing = self.routing
        client, server = scope.get("client"), scope.get("server")
        forward = routing.prepare_forward(
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
            routing.counters.add("forward_failures")
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
        last, raw = self._last_tags
        if state is not last:
            raw = _encode(self.routing.tags(state))
            self._last_tags = (state, raw)
        return raw

    async def send_reply(self, send: Send, reply: Reply, state: NodeState) -> None:
        """Answer with one of the middleware's own replies."""
        tags = self.routing.tags(state)
        last_reply, last_tags, headers = self._last_reply
        if reply is not last_reply or tags is not last_tags:
            headers = OUR_TAGS_BYTES.tag(_encode(reply.headers), self.raw_tags(state))
            self._last_reply = (reply, tags, headers)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})


class _ASGIRequest(RequestContext):
    """One request the app runs, and its response: tagged, given the TXID cookie, or replaced with the ending.

    The request's context and the response's state in one object: one is
    built on every request. The adapter sets the five fields below right
    after building it.
    """

    __slots__ = ("headers", "middleware", "receive", "replaced", "send_downstream")

    primary_required_error = staticmethod(starlette_primary_required)

    middleware: PrimaryRoutingMiddleware
    receive: Receive
    #: The server's send.
    send_downstream: Send
    #: The app's response was replaced by the ending: drop the rest of it.
    replaced: bool
    #: The request's headers as the server gave them (a log record's request id is read from them).
    headers: Iterable[tuple[bytes, bytes]]

    def raw_headers(self) -> Iterable[tuple[bytes, bytes]]:
        return self.headers

    async def send(self, message: Message) -> None:
        if self.replaced:
            return
        if message["type"] == "http.response.start":
            if self.routing.counters.listened and not self.must_end_elsewhere:
                self.routing.counters.observe("ran")  # its answer stands (unless replaced below): it ran
            self.response_started = True
            headers: Iterable[tuple[bytes, bytes]] = message.get("headers", ())
            if self.must_end_elsewhere:
                headers = list(headers)  # read twice; ASGI allows a one-shot iterable
                if self.replaces_response(headers):
                    self.replaced = True
                    await self.send_ending()
                    return
            tagged = OUR_TAGS_BYTES.tag(headers, self.middleware.raw_tags(self.state))
            if self.routing.rules.read_your_writes:  # a cookie may be due
                tagged += _encode(self.cookie_headers(await self._read_txids()))
            message = {**message, "headers": tagged}
        await self.send_downstream(message)

    async def send_ending(self) -> None:
        """Answer with the reply the request must end in (the app's response never started)."""
        settlement = self.settlement()
        if settlement is None:
            assert self.ending is not None
            reply = self.ending
        else:
            io = AsyncMountIO(self.routing, functools.partial(_measure_body, self.receive))
            reply = self.settle(await drive_async(settlement, io))
        await self.middleware.send_reply(self.send_downstream, reply, self.state)

    async def _read_txids(self) -> tuple[int | None, ...] | None:
        # Read after the handler ran (the TXIDs must include its writes), off the loop.
        positions = self.routing.positions
        if positions is None or not self.txid_cookie_due():
            return None
        run_in_thread, _ = async_backend()
        txids: tuple[int | None, ...] = await run_in_thread(positions.read)
        return txids


def _without_forward_claim(scope: Scope) -> Scope:
    """*scope* without a forwarded request's secret and hop count: they are not the app's business."""
    return {**scope, "headers": [h for h in scope.get("headers", ()) if h[0] not in _FORWARD_HEADERS]}


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
