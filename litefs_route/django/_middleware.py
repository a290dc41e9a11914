"""The Django middleware: Django's request and response objects around the one decision.

Documented in :mod:`litefs_route.django`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from http.cookies import Morsel
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIRequest
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils.encoding import escape_uri_path

from .._consistency import TxidCookies
from .._context import RequestContext, current_request, report_exception
from .._drivers import AsyncMountIO, KeptBody, MountIO, async_backend, drive, drive_async, measure_stream
from .._forwarding import (
    ClientBodyError,
    Relay,
    cgi_headers,
    cgi_raw_target,
    cgi_server,
    drop_forward_claim,
    forward_blocking,
)
from .._log_fields import log_fields
from .._middleware import RoutingMiddleware, middleware_doc, option_defaults
from .._mount import NodeState
from .._replies import LENGTH_REQUIRED, PRIMARY_HEADER, PRIMARY_REGION_HEADER, Reply
from .._request import RequestInfo, from_environ
from .._verdicts import Kind, Outcome

__all__ = ["SETTING", "PrimaryRoutingMiddleware", "options_from_settings"]

#: The Django setting that holds the middleware's options.
SETTING = "LITEFS_ROUTE"

GetResponse = Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]


# Read once: reading an enum member costs about 1,000 instructions each time on Python 3.11.
_RUN = Kind.RUN

logger = logging.getLogger("litefs_route")


def options_from_settings() -> dict[str, Any]:
    """The options in ``settings.LITEFS_ROUTE`` (ImproperlyConfigured if it is not a dict of option names)."""
    options = getattr(settings, SETTING, {})
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(f"settings.{SETTING} must be a dict of options, not {type(options).__name__}")
    known = option_defaults()
    if unknown := sorted(str(name) for name in options if name not in known):
        raise ImproperlyConfigured(
            f"settings.{SETTING} names no option {', '.join(map(repr, unknown))}; the options are {', '.join(known)}"
        )
    return dict(options)


class PrimaryRoutingMiddleware(RoutingMiddleware[GetResponse]):
    __doc__ = middleware_doc(
        "Django middleware that routes writes to the LiteFS primary; its options come from "
        "``settings.LITEFS_ROUTE`` (a dict, the option names as keys)."
    )

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        try:
            super().__init__(get_response, **options_from_settings())
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"settings.{SETTING}: {exc}") from exc
        # Django hands an async get_response exactly when it runs this middleware async.
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        # The safety net for exceptions Django turns into a 500 before they reach us (another
        # middleware's). A module-level function: Django's signals hold weak references.
        got_request_exception.connect(report_exception, dispatch_uid="litefs_route.report_exception")
        if not apps.is_installed("litefs_route.django"):  # its checks do not run: say what they would
            from ._checks import check_litefs_route

            for message in check_litefs_route():
                logger.warning("%s", message, extra=log_fields(event="django_check", reason=message.msg))

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.async_mode:
            return self._call_async(request)
        routing = self.routing
        info, routed = routing.route(*_request_info(request, routing.txid_cookies))
        io = None
        if isinstance(routed, Outcome):
            outcome = routed
        else:
            io = MountIO(routing, functools.partial(_measure_body, request))
            outcome = drive(routed, io)
        if outcome.decision.kind is not _RUN:
            if outcome.decision.kind is Kind.FORWARD:
                return self._forward(request, info, outcome, io.kept if io is not None else KeptBody())
            return self._reply(routing.reply(outcome.decision, info, request.META), outcome.state)
        _strip_forward_secret(request, info)
        ctx = _DjangoRequest(routing, info, outcome)
        ctx.meta = request.META
        token = current_request.set(ctx)
        try:
            response = self.app(request)
        finally:
            current_request.reset(token)
        assert isinstance(response, HttpResponseBase)  # sync mode: Django adapted get_response to us
        if ctx.must_end_elsewhere and ctx.replaces_response(response.items()):
            _discard(response)
            settlement = ctx.settlement()
            if settlement is not None:
                ctx.settle(drive(settlement, MountIO(routing, functools.partial(_measure_body, request))))
            return self._ending(ctx)
        if routing.counters.listened and not ctx.must_end_elsewhere:
            routing.counters.observe("ran")  # the view's answer stands: it ran
        positions = routing.positions
        txids = positions.read() if positions is not None and ctx.txid_cookie_due() else None
        return self._tagged(response, ctx, txids)

    async def _call_async(self, request: HttpRequest) -> HttpResponseBase:
        routing = self.routing
        info, routed = routing.route(*_request_info(request, routing.txid_cookies))
        aio = None
        if isinstance(routed, Outcome):
            outcome = routed
        else:
            aio = AsyncMountIO(routing, functools.partial(_measure_body_async, request))
            outcome = await drive_async(routed, aio)
        if outcome.decision.kind is not _RUN:
            if outcome.decision.kind is Kind.FORWARD:
                kept = aio.kept if aio is not None else KeptBody()
                run_in_thread, _ = async_backend()  # forwarded from a worker thread, relayed chunk by chunk
                response: HttpResponseBase = await run_in_thread(lambda: self._forward(request, info, outcome, kept))
                return response
            return self._reply(routing.reply(outcome.decision, info, request.META), outcome.state)
        _strip_forward_secret(request, info)
        ctx = _DjangoRequest(routing, info, outcome)
        ctx.meta = request.META
        token = current_request.set(ctx)
        try:
            response = await self.app(request)  # async mode: get_response is async
        finally:
            current_request.reset(token)
        assert isinstance(response, HttpResponseBase)
        run_in_thread, _ = async_backend()
        if ctx.must_end_elsewhere and ctx.replaces_response(response.items()):
            await run_in_thread(lambda: _discard(response))  # may close files: not on the loop
            settlement = ctx.settlement()
            if settlement is not None:
                io = AsyncMountIO(routing, functools.partial(_measure_body_async, request))
                ctx.settle(await drive_async(settlement, io))
            return self._ending(ctx)
        if routing.counters.listened and not ctx.must_end_elsewhere:
            routing.counters.observe("ran")  # the view's answer stands: it ran
        positions = routing.positions
        txids = await run_in_thread(positions.read) if positions is not None and ctx.txid_cookie_due() else None
        return self._tagged(response, ctx, txids)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
        """Answer what ``ensure_primary()`` raised (or SQLite's read-only refusal) in a view or a template.

        Answered here, Django neither logs the exception nor sends
        ``got_request_exception``. The answer is a stand-in: ``__call__``
        replaces it with the request's ending, settled there (this runs in a
        worker thread under ASGI).
        """
        ctx = current_request.get()
        if ctx is None or not ctx.ends_on_exception(exception):
            return None
        return _mark_logged(HttpResponse(status=409))

    def _forward(self, request: HttpRequest, info: RequestInfo, outcome: Outcome, kept: KeptBody) -> HttpResponseBase:
        """Forward mode: send the request to the primary and relay its answer, streaming (blocking: a thread)."""
        routing = self.routing
        # Django's ASGI handler has read the whole body, whatever its framing (HTTP/2 may send neither
        # header): its length is unknown here, so it is sent chunked. Under WSGI, Django reads no chunked body.
        under_asgi = isinstance(request, ASGIRequest)
        chunked = under_asgi and info.content_length is None
        if info.unknown_length and not under_asgi:
            return self._reply(LENGTH_REQUIRED, outcome.state)
        forward = routing.prepare_forward(
            info,
            outcome.decision,
            cgi_headers(request.META),
            client=request.META.get("REMOTE_ADDR"),
            scheme=request.scheme or "http",
            chunked=chunked,
            server=cgi_server(request.META),
        )
        if isinstance(forward, Reply):
            return self._reply(forward, outcome.state)
        target = _request_target(request, under_asgi)
        relay = forward_blocking(forward, info.method, target, _body(request, forward.length, kept))
        if isinstance(relay, Reply):
            routing.counters.add("forward_failures")
            return self._reply(relay, outcome.state)
        # Under ASGI (even with this middleware run sync) an async iterator: Django would read a sync one whole.
        return _relayed(relay, _async_chunks(relay.body) if under_asgi else relay.body)

    # -- responses ----------------------------------------------------------

    def _reply(self, reply: Reply, state: NodeState) -> HttpResponse:
        """One of the middleware's own responses (replay, 503, 413, 408, health), tagged."""
        response = HttpResponse(reply.body, status=reply.status)
        for name, value in (*reply.headers, *self.routing.tags(state)):
            response[name] = value
        return _mark_logged(response)

    def _ending(self, ctx: RequestContext) -> HttpResponse:
        assert ctx.ending is not None  # known, or settled just now
        return self._reply(ctx.ending, ctx.state)

    def _tagged(
        self, response: HttpResponseBase, ctx: RequestContext, txids: tuple[int | None, ...] | None
    ) -> HttpResponseBase:
        """The view's response with our tags (any copy of them the view set dropped) and TXID cookies."""
        for name in (PRIMARY_HEADER, PRIMARY_REGION_HEADER):  # absent from our tags when none is known
            response.headers.pop(name, None)  # case-insensitive
        for name, value in self.routing.tags(ctx.state):
            response[name] = value
        for _, cookie in ctx.cookie_headers(txids):
            _add_set_cookie(response, cookie)
        return response


def _mark_logged(response: HttpResponse) -> HttpResponse:
    # django.request logs every response >= 400 as it leaves the handler (a 409 as a
    # warning, a 503 as an error, mailed to ADMINS) unless it is marked as logged. A
    # replay is not an error; each of our answers is counted (routing.counters) and
    # logged at DEBUG by litefs_route, and a 503 in a failover must not mail per request.
    response._has_been_logged = True
    return response


async def _measure_body_async(request: HttpRequest, limit: int, timeout: float, keep: KeptBody | None) -> int | None:
    """:func:`_measure_body` off the event loop (async mode)."""
    run_in_thread, _ = async_backend()
    size: int | None = await run_in_thread(lambda: _measure_body(request, limit, timeout, keep))
    return size


class _DjangoRequest(RequestContext):
    """One request the view runs, with its ``META`` (a log record's request id is read from it)."""

    __slots__ = ("meta",)

    meta: Mapping[str, Any]

    def raw_headers(self) -> Mapping[str, Any]:
        return self.meta


def _request_info(request: HttpRequest, txid_cookies: TxidCookies | None) -> tuple[str, str, RequestInfo | None]:
    """What :meth:`NodeRouting.route` takes: the method, the path, and the parsed request (None: nothing to parse)."""
    # META: WSGI's environ, or what Django's ASGI handler builds in its image. The path is
    # decoded, with SCRIPT_NAME: what Django's URL patterns see.
    method, path = request.method or "GET", request.path
    return method, path, from_environ(request.META, method, path, txid_cookies)


def _request_target(request: HttpRequest, under_asgi: bool) -> str:
    """The path and query as the client sent them, for forwarding.

    The server's raw copy where it keeps one; else Django's decoded path,
    escaped again (``%`` too: ``%252F`` must not reach the primary as ``/``),
    and the query's own bytes (``get_full_path()`` would re-encode a raw
    non-ASCII query as if it were text).
    """
    raw = cgi_raw_target(request.META)
    if raw is not None:
        return raw
    path = escape_uri_path(request.path)
    query = request.scope.get("query_string", b"").decode("latin-1") if under_asgi else request.META.get("QUERY_STRING")
    return f"{path}?{query}" if query else path


def _body(request: HttpRequest, length: int | None, kept: KeptBody) -> Iterator[bytes]:
    """The request body for forwarding: what measuring it read, then the rest as Django reads it (None: to its end)."""
    yield from kept.chunks
    if kept.ended:
        return
    if length is None:
        while chunk := request.read(65536):
            yield chunk
        return
    left = length - sum(map(len, kept.chunks))
    while left > 0:
        chunk = request.read(min(65536, left))
        if not chunk:
            raise ClientBodyError(f"the client sent {length - left} of the {length} bytes it announced")
        left -= len(chunk)
        yield chunk


async def _async_chunks(body: Iterable[bytes]) -> AsyncIterator[bytes]:
    """A relayed body for ASGI Django: each read in a worker thread, never on the loop."""
    run_in_thread, _ = async_backend()
    pieces = iter(body)
    try:
        while (chunk := await run_in_thread(lambda: next(pieces, None))) is not None:
            yield chunk
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            await run_in_thread(close)


def _relayed(relay: Relay, content: Iterable[bytes] | AsyncIterator[bytes]) -> StreamingHttpResponse:
    """The primary's response as Django's: its status, its headers (cookies through response.cookies), streamed."""
    response = StreamingHttpResponse(content, status=relay.status, reason=relay.reason or None)
    response.headers.pop("Content-Type", None)  # Django's default; the primary's own, if any, follows
    seen: set[str] = set()
    for name, value in relay.headers:
        key = name.lower()
        if key == "set-cookie":
            _add_set_cookie(response, value)
        elif key in seen:
            response[name] = f"{response[name]}, {value}"  # one header per name in Django: the list form
        else:
            response[name] = value
            seen.add(key)
    response._has_been_logged = True  # the primary logged its own answer
    return response


class _RawSetCookie(Morsel):  # type: ignore[type-arg]
    """A ``Set-Cookie`` value passed through as it is: Django renders only ``response.cookies``.

    ``SimpleCookie.load`` would reparse it, dropping what it does not know
    (``Partitioned``) and misreading the rest (``Priority=High``).
    """

    def __init__(self, raw: str) -> None:
        super().__init__()
        self.raw = raw

    def output(self, attrs: object = None, header: str = "Set-Cookie:") -> str:
        return f"{header} {self.raw}"


def _add_set_cookie(response: HttpResponseBase, value: str) -> None:
    # A key no cookie can have: two Set-Cookie headers with one name (other paths) both go out.
    dict.__setitem__(response.cookies, f"litefs-route raw {len(response.cookies)}", _RawSetCookie(value))


def _discard(response: HttpResponseBase) -> None:
    """Close a replaced response's resources, without ``close()``: it sends ``request_finished`` mid-request."""
    for closer in getattr(response, "_resource_closers", ()):
        closer()


def _strip_forward_secret(request: HttpRequest, info: RequestInfo) -> None:
    """A genuine forwarded request (it runs): the secret is not the view's business."""
    if info.forward_claim is not None:
        drop_forward_claim(request.META)
        request.__dict__.pop("headers", None)  # request.headers is cached from META once read


def _measure_body(request: HttpRequest, limit: int, timeout: float, keep: KeptBody | None) -> int | None:
    """The size of the body Django hands the view (see :func:`~litefs_route._drivers.measure_stream`)."""
    return measure_stream(request.read, limit, timeout, keep)
