"""Primary routing for WSGI apps (Flask, Django, Falcon, bare WSGI).

::

    from litefs_route.wsgi import PrimaryRoutingMiddleware
    app.wsgi_app = PrimaryRoutingMiddleware(app.wsgi_app, write_on_read=["/auth/callback/*"])

On a replica, writes are answered with ``409`` + ``fly-replay:
instance=<primary>`` without calling the app or reading the body, and Fly's
proxy replays them on the primary. Every response is tagged with
``Fly-Primary-Instance`` and ``Fly-Instance``. See :class:`~litefs_route.routing.Router`
for the options, which are the same as the ASGI middleware's.

The node's state is read from the mount inline, at most once per
``cache_ttl`` per process (a replayed request reads it fresh). The app's
response iterable is returned unchanged (``close()`` and
``wsgi.file_wrapper`` keep working), so nothing is buffered. The request's
:class:`~litefs_route.context.RequestContext` is also in
``environ["litefs_route.context"]``.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from .context import PrimaryRequired, RequestContext, _current, mark_readonly_failure, report_exception
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

T = TypeVar("T")

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment  # noqa: F401 (used in a string)

__all__ = ["PrimaryRoutingMiddleware"]

_OURS = {PRIMARY_HEADER.lower(), INSTANCE_HEADER.lower()}
_CHUNK = 65536


def _request_info(environ: WSGIEnvironment) -> RequestInfo:
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    if not path.isascii():
        # PEP 3333 hands the path over as a latin-1 "native string" of the
        # raw bytes; the app (and LiteFS's globs) see it decoded as UTF-8.
        with contextlib.suppress(UnicodeError):
            path = path.encode("latin-1").decode("utf-8", "surrogateescape")
    return RequestInfo.from_headers(
        environ.get("REQUEST_METHOD", "GET"),
        path,
        replay_src=environ.get("HTTP_FLY_REPLAY_SRC"),
        content_length=environ.get("CONTENT_LENGTH"),
        transfer_encoding=environ.get("HTTP_TRANSFER_ENCODING"),
        cookie=environ.get("HTTP_COOKIE"),
    )


def _with_tags(headers: Iterable[tuple[str, str]], tags: Headers) -> list[tuple[str, str]]:
    tagged = [h for h in headers if h[0].lower() not in _OURS]
    tagged += tags
    return tagged


def _has_replay(headers: list[tuple[str, str]]) -> bool:
    return any(name.lower() == REPLAY_HEADER for name, _ in headers)


def _measure_body(environ: WSGIEnvironment, limit: int, timeout: float) -> int | None:
    """The body's size (reading at most *limit* + 1 bytes), or None if it took over *timeout* seconds.

    The time is checked between reads: a read that stalls ends when the
    server's own read timeout ends it (WSGI gives no way to bound it here).
    """
    # Only a server that marks the input as terminated (gunicorn, Werkzeug
    # for chunked bodies) lets us read to EOF without hanging.
    if not environ.get("wsgi.input_terminated"):
        return 0
    stream = environ["wsgi.input"]
    deadline = time.monotonic() + timeout
    size = 0
    while size <= limit:
        chunk = stream.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            break
        size += len(chunk)
        if time.monotonic() > deadline:
            return None
    return size


@functools.cache
def _connect_flask_signal() -> None:
    from flask import got_request_exception

    def on_exception(sender: object, exception: BaseException, **extra: object) -> None:
        report_exception(exception)

    got_request_exception.connect(on_exception, weak=False)


def _discarding_write(data: bytes) -> None:
    """The write() callable of a response the middleware replaced."""


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


class PrimaryRoutingMiddleware(RoutingMiddleware["WSGIApplication"]):
    """WSGI middleware that routes writes to the LiteFS primary."""

    def _setup(self) -> None:
        # Production Flask turns an exception into a 500 before it reaches us;
        # its got_request_exception signal still lets the safety net see it.
        if "flask" in sys.modules:
            _connect_flask_signal()

    def _drive(self, plan: Generator[Any, Any, T], environ: WSGIEnvironment) -> T:
        cache = self.router.cache
        try:
            need = next(plan)
            while True:
                if isinstance(need, ReadState):
                    need = plan.send(cache.get(need.max_age))
                elif isinstance(need, Sleep):
                    time.sleep(need.seconds)
                    need = plan.send(None)
                elif isinstance(need, MeasureBody):
                    need = plan.send(_measure_body(environ, need.limit, need.timeout))
                else:
                    positions = self.router.positions
                    assert positions is not None
                    if isinstance(need, WaitForTxid):
                        need = plan.send(positions.wait(need.txid, need.timeout))
                    else:
                        need = plan.send(positions.read())
        except StopIteration as stop:
            result: T = stop.value
            return result

    def _required_reply(self, ctx: RequestContext, environ: WSGIEnvironment) -> Reply:
        """The reply a request that must end on the primary ends in; settled first if need be (updates ctx)."""
        assert ctx.required is not None
        if ctx.required.kind is Kind.WAIT_FOR_PRIMARY:  # SETTLE, or ensure_primary() with no primary
            outcome = self._drive(self.router.settle(ctx.request), environ)
            ctx.required, ctx.state = outcome.decision, outcome.state
        return self.router.reply(ctx.required)

    def _txid_cookies(self, ctx: RequestContext) -> list[tuple[str, str]]:
        # Read after the handler ran: the TXID must include its write.
        router = self.router
        txid = None
        if router.positions is not None and router.needs_txid(ctx.write, ctx.state, ctx.request):
            txid = router.positions.read()
        return router.txid_cookies(txid, ctx.clear_txid)

    def _reply(self, start_response: StartResponse, reply: Reply, state: NodeState) -> list[bytes]:
        start_response(reply.status_line, _with_tags(reply.headers, self.router.tags(state)))
        return [reply.body]

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        router = self.router
        request = _request_info(environ)
        outcome = router.outcome_without_io(request) or self._drive(router.plan(request), environ)
        state = outcome.state
        if outcome.decision.kind is not Kind.RUN:
            return self._reply(start_response, router.reply(outcome.decision), state)

        ctx = RequestContext(router, request, state, "wsgi", outcome.decision.write, clear_txid=outcome.clear_txid)
        environ["litefs_route.context"] = ctx
        started = False
        replaced: Reply | None = None

        def routed_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Any:
            nonlocal started, replaced
            if ctx.required is not None and not _has_replay(headers):
                # ensure_primary() was called and the app answered something
                # else (its error handler ate the exception): the request
                # still ends in the replay.
                replaced = self._required_reply(ctx, environ)
                status, headers = replaced.status_line, list(replaced.headers)
            elif router.positions is not None:  # consistency on: a cookie may be due
                headers = headers + self._txid_cookies(ctx)
            started = True
            # ctx.state: the reading the request was routed on, or a fresher one it was settled on.
            write = start_response(status, _with_tags(headers, router.tags(ctx.state)), exc_info)
            return _discarding_write if replaced is not None else write

        token = _current.set(ctx)
        try:
            result = self.app(environ, routed_start_response)
        except PrimaryRequired as exc:
            if started:
                raise
            reply = exc.reply if ctx.required is None else self._required_reply(ctx, environ)
            return self._reply(start_response, reply, ctx.state)
        except Exception as exc:
            # The safety net: SQLite refused a write that slipped through.
            # (Or any exception after ensure_primary()/the Flask signal marked
            # the request: it ends in that reply all the same.)
            if started or (ctx.required is None and not mark_readonly_failure(ctx, exc)):
                raise
            reply = self._required_reply(ctx, environ)
            return self._reply(start_response, reply, ctx.state)
        finally:
            _current.reset(token)
        if replaced is not None:
            _close(result)
            return [replaced.body]
        if ctx.required is not None and not started:
            _close(result)
            reply = self._required_reply(ctx, environ)
            return self._reply(start_response, reply, ctx.state)
        return result
