"""Primary routing for ASGI apps (Starlette, FastAPI, Django's ASGI, Quart).

::

    from starlette.middleware import Middleware
    from litefs_route.asgi import PrimaryRoutingMiddleware
    app = Starlette(routes=..., middleware=[Middleware(PrimaryRoutingMiddleware, write_on_read=["/session/refresh"])])

    # or around any ASGI app
    app = PrimaryRoutingMiddleware(app)

Pure ASGI (no Starlette import): ``http`` scopes are routed; ``websocket``
and ``lifespan`` scopes pass straight through. Response headers are added by
wrapping ``send``; body messages are forwarded one by one, never buffered.

The event loop never waits on the mount: a refresh of the node's state (at
most once per ``cache_ttl``, or for a replayed request) runs in a worker
thread, through anyio when it is installed (Starlette, FastAPI) and
``asyncio.to_thread`` otherwise. Options: see :class:`~litefs_route.routing.Router`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Generator, Iterable, MutableMapping
from typing import Any, TypeVar

from .context import PrimaryRequired, RequestContext, _current, mark_readonly_failure
from .decision import Kind, RequestInfo
from .mount import NodeState
from .routing import (
    INSTANCE_HEADER,
    PRIMARY_HEADER,
    REPLAY_HEADER,
    Headers,
    MeasureBody,
    ReadState,
    Reply,
    RoutingMiddleware,
    Sleep,
    WaitForTxid,
)

__all__ = ["PrimaryRoutingMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]
T = TypeVar("T")

_OURS = {PRIMARY_HEADER.lower().encode(), INSTANCE_HEADER.lower().encode()}
_REPLAY = REPLAY_HEADER.encode()


@functools.cache
def _async_backend() -> tuple[Callable[[Callable[[], Any]], Awaitable[Any]], Callable[[float], Awaitable[None]]]:
    """(run_in_thread, sleep) for the running loop: anyio's when installed,
    so trio-hosted apps work too; asyncio's otherwise."""
    try:
        import anyio
        import anyio.to_thread

        return anyio.to_thread.run_sync, anyio.sleep
    except ImportError:
        import asyncio

        return asyncio.to_thread, asyncio.sleep


def _request_info(scope: Scope) -> RequestInfo:
    replay_src = content_length = transfer_encoding = None
    cookies: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            cookies.append(value.decode("latin-1"))
        elif name == b"fly-replay-src":
            replay_src = value.decode("latin-1")
        elif name == b"content-length":
            content_length = value.decode("latin-1")
        elif name == b"transfer-encoding":
            transfer_encoding = value.decode("latin-1")
    return RequestInfo.from_headers(
        scope["method"],
        scope["path"],
        replay_src=replay_src,
        content_length=content_length,
        transfer_encoding=transfer_encoding,
        cookie="; ".join(cookies) or None,  # HTTP/2 may split the header
    )


def _encode(headers: Iterable[tuple[str, str]]) -> RawHeaders:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _with_tags(headers: Iterable[tuple[bytes, bytes]], tags: RawHeaders) -> RawHeaders:
    tagged = [h for h in headers if h[0].lower() not in _OURS]
    tagged += tags
    return tagged


async def _measure_body(receive: Receive, limit: int, timeout: float) -> int | None:
    """The body's size (reading at most *limit* + 1 bytes), or None if it took over *timeout* seconds."""
    try:
        import anyio
    except ImportError:
        import asyncio

        try:
            return await asyncio.wait_for(_count_body(receive, limit), timeout)
        except asyncio.TimeoutError:
            return None
    with anyio.move_on_after(timeout):
        return await _count_body(receive, limit)
    return None


async def _count_body(receive: Receive, limit: int) -> int:
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] != "http.request":
            break  # http.disconnect: the client is gone
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return size


class PrimaryRoutingMiddleware(RoutingMiddleware[ASGIApp]):
    """ASGI middleware that routes writes to the LiteFS primary."""

    def _setup(self) -> None:
        # Encoded once per reading of the mount / per reply, not per request.
        self._last_tags: tuple[Headers, RawHeaders] = ((), [])
        self._last_reply: tuple[Reply | None, Headers, RawHeaders] = (None, (), [])

    def _raw_tags(self, state: NodeState) -> RawHeaders:
        tags = self.router.tags(state)
        last, raw = self._last_tags
        if tags is not last:
            raw = _encode(tags)
            self._last_tags = (tags, raw)
        return raw

    async def _drive(self, plan: Generator[Any, Any, T], receive: Receive) -> T:
        cache = self.router.cache
        run_in_thread, sleep = _async_backend()
        try:
            need = next(plan)
            while True:
                if isinstance(need, ReadState):
                    state = cache.cached(need.max_age) or await run_in_thread(cache.refresh)
                    need = plan.send(state)
                elif isinstance(need, Sleep):
                    await sleep(need.seconds)
                    need = plan.send(None)
                elif isinstance(need, MeasureBody):
                    need = plan.send(await _measure_body(receive, need.limit, need.timeout))
                else:
                    positions = self.router.positions
                    assert positions is not None
                    if isinstance(need, WaitForTxid):
                        need = plan.send(await positions.wait_async(need.txid, need.timeout))
                    else:
                        need = plan.send(await run_in_thread(positions.read))
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def _required_reply(self, ctx: RequestContext, receive: Receive) -> Reply:
        """The reply a request that must end on the primary ends in; settled first if need be (updates ctx)."""
        assert ctx.required is not None
        if ctx.required.kind is Kind.WAIT_FOR_PRIMARY:  # SETTLE, or ensure_primary() with no primary
            outcome = await self._drive(self.router.settle(ctx.request), receive)
            ctx.required, ctx.state = outcome.decision, outcome.state
        return self.router.reply(ctx.required)

    async def _txid_cookies(self, ctx: RequestContext) -> list[tuple[str, str]]:
        # Read after the handler ran (the TXID must include its write), off the loop.
        router = self.router
        txid = None
        if router.positions is not None and router.needs_txid(ctx.write, ctx.state, ctx.request):
            run_in_thread, _ = _async_backend()
            txid = await run_in_thread(router.positions.read)
        return router.txid_cookies(txid, ctx.clear_txid)

    async def _reply(self, send: Send, reply: Reply, state: NodeState) -> None:
        tags = self.router.tags(state)
        last_reply, last_tags, headers = self._last_reply
        if reply is not last_reply or tags is not last_tags:
            headers = _with_tags(_encode(reply.headers), self._raw_tags(state))
            self._last_reply = (reply, tags, headers)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        router = self.router
        request = _request_info(scope)
        outcome = router.outcome_without_io(request)
        if outcome is None:
            outcome = await self._drive(router.plan(request), receive)
        state = outcome.state
        if outcome.decision.kind is not Kind.RUN:
            await self._reply(send, router.reply(outcome.decision), state)
            return

        ctx = RequestContext(router, request, state, "asgi", outcome.decision.write, clear_txid=outcome.clear_txid)
        tags = self._raw_tags(state)
        started = False
        replaced = False

        async def routed_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the rest of a response we replaced
            if message["type"] == "http.response.start":
                started = True
                headers: Iterable[tuple[bytes, bytes]] = message.get("headers", ())
                if ctx.required is not None:
                    headers = list(headers)  # read twice below; ASGI allows a one-shot iterable
                    if not any(name.lower() == _REPLAY for name, _ in headers):
                        # ensure_primary() was called and the app answered
                        # something else: the request still ends in the replay.
                        replaced = True
                        reply = await self._required_reply(ctx, receive)
                        await self._reply(send, reply, ctx.state)
                        return
                tagged = _with_tags(headers, tags)
                if router.positions is not None:  # consistency on: a cookie may be due
                    tagged += _encode(await self._txid_cookies(ctx))
                message = {**message, "headers": tagged}
            await send(message)

        token = _current.set(ctx)
        try:
            await self.app(scope, receive, routed_send)
        except PrimaryRequired as exc:
            if started:
                raise
            reply = exc.reply if ctx.required is None else await self._required_reply(ctx, receive)
            await self._reply(send, reply, ctx.state)
            return
        except Exception as exc:
            # The safety net: SQLite refused a write that slipped through.
            # (Or any exception after ensure_primary() marked the request.)
            if started or (ctx.required is None and not mark_readonly_failure(ctx, exc)):
                raise
            reply = await self._required_reply(ctx, receive)
            await self._reply(send, reply, ctx.state)
            return
        finally:
            _current.reset(token)
        if ctx.required is not None and not started:
            reply = await self._required_reply(ctx, receive)
            await self._reply(send, reply, ctx.state)
