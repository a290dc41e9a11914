"""Primary routing for WSGI apps (Flask, Django, Falcon, bare WSGI).

::

    from litefs_route.wsgi import PrimaryRoutingMiddleware
    app.wsgi_app = PrimaryRoutingMiddleware(app.wsgi_app, write_on_read=["/auth/callback/*"])

On a replica, writes are answered with ``409`` + ``fly-replay:
instance=<primary>`` without calling the app or reading the body, and Fly's
proxy replays them on the primary. Every response is tagged with
``Fly-Primary-Instance`` and ``Fly-Instance``. The options, the same for both
adapters, are :class:`~litefs_route._middleware.RoutingMiddleware`'s.

The node's state is pushed by LiteFS's event stream where it is up
(:mod:`litefs_route._subscriber`), else read from the mount inline, at most
once per ``cache_ttl`` per process (a replayed request reads it fresh). The app's
response iterable is returned unchanged (``close()`` and
``wsgi.file_wrapper`` keep working), so nothing is buffered. The environ
gets no reference to the request's context: the context holds the environ,
and a cycle would leave every request to the garbage collector. The safety net reaches into the Flask
app the middleware wraps (``app.wsgi_app = PrimaryRoutingMiddleware(app.wsgi_app)``):
SQLite's refusal is answered before Flask's error path logs it or sends
``got_request_exception`` (:func:`~litefs_route._frameworks.connect_flask_safety_net`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._context import RequestContext, current_request, report_exception
from ._drivers import KeptBody, MountIO, drive, measure_stream
from ._forwarding import (
    ClientBodyError,
    cgi_headers,
    cgi_server,
    cgi_target,
    drop_forward_claim,
    forward_blocking,
)
from ._frameworks import connect_flask_safety_net, werkzeug_primary_required
from ._middleware import RoutingMiddleware, middleware_doc
from ._replies import LENGTH_REQUIRED, OUR_TAGS, Headers, Reply
from ._request import RequestInfo, from_environ, routing_cgi_keys
from ._verdicts import Kind, Outcome

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment  # noqa: F401 (used in a string)

__all__ = ["PrimaryRoutingMiddleware"]

_CHUNK = 65536

# Read once: reading an enum member costs about 1,000 instructions each time on Python 3.11.
_RUN = Kind.RUN


class PrimaryRoutingMiddleware(RoutingMiddleware["WSGIApplication"]):
    __doc__ = middleware_doc("WSGI middleware that routes writes to the LiteFS primary.")

    def _setup(self) -> None:
        # Production Flask turns an exception into a 500 (and an error report) before it
        # reaches us: the safety net answers inside the Flask app, before its error path.
        connect_flask_safety_net(self.app, report_exception)
        self._routing_keys = routing_cgi_keys(self.routing.txid_cookies)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        routing = self.routing
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if not path.isascii():
            path = _decoded_path(path)
        # from_environ's test without its call: most requests carry nothing to parse (None).
        if not environ.get("CONTENT_LENGTH") and environ.keys().isdisjoint(self._routing_keys):
            parsed = None
        else:
            parsed = from_environ(environ, method, path, routing.txid_cookies)
        request, routed = routing.route(method, path, parsed)
        io = None
        if isinstance(routed, Outcome):
            outcome = routed
        else:
            io = MountIO(routing, functools.partial(_measure_body, environ))
            outcome = drive(routed, io)
        if outcome.decision.kind is not _RUN:
            if outcome.decision.kind is Kind.FORWARD:
                return self.relay_to_primary(
                    environ, start_response, request, outcome, io.kept if io is not None else KeptBody()
                )
            return _send_reply(
                start_response, routing.reply(outcome.decision, request, environ), routing.tags(outcome.state)
            )
        if request.forward_claim is not None:  # a genuine forwarded request: the secret is not the app's business
            drop_forward_claim(environ)

        ctx = _WSGIRequest(routing, request, outcome)
        ctx.environ, ctx.start = environ, start_response
        token = current_request.set(ctx)
        try:
            result = self.app(environ, ctx.start_response)
        except Exception as exc:
            if not ctx.ends_on_exception(exc):
                if not ctx.response_started:  # it ran, and failed: the server answers 500
                    routing.counters.observe("ran")
                raise
            return ctx.send_ending()
        finally:
            current_request.reset(token)
        if ctx.must_end_elsewhere:  # only then can anything remain to do after the app
            if ctx.replaced_by is not None:
                _close(result)
                return [ctx.replaced_by.body]
            if ctx.ends_without_response():
                _close(result)
                return ctx.send_ending()
        return result

    def relay_to_primary(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        request: RequestInfo,
        outcome: Outcome,
        kept: KeptBody,
    ) -> Iterable[bytes]:
        """Send the request to the primary ourselves (forward mode) and relay its answer, streaming."""
        routing = self.routing
        if request.unknown_length and not environ.get("wsgi.input_terminated"):
            # Its end cannot be found here: forwarding it would send it cut short.
            return _send_reply(start_response, LENGTH_REQUIRED, routing.tags(outcome.state))
        forward = routing.prepare_forward(
            request,
            outcome.decision,
            cgi_headers(environ),
            client=environ.get("REMOTE_ADDR"),
            scheme=environ.get("wsgi.url_scheme", "http"),
            chunked=request.unknown_length,  # WSGI (HTTP/1.x): no Content-Length and not chunked is no body
            server=cgi_server(environ),
        )
        if isinstance(forward, Reply):
            return _send_reply(start_response, forward, routing.tags(outcome.state))
        relay = forward_blocking(forward, request.method, cgi_target(environ), _body(environ, kept, forward.length))
        if isinstance(relay, Reply):
            routing.counters.add("forward_failures")
            return _send_reply(start_response, relay, routing.tags(outcome.state))
        start_response(f"{relay.status} {relay.reason or 'Unknown'}", relay.headers)
        return relay.body


class _WSGIRequest(RequestContext):
    """One request the app runs, and its response: tagged, given the TXID cookie, or replaced with the ending.

    The request's context and the response's state in one object: one is
    built on every request. The adapter sets the two fields below right
    after building it.
    """

    __slots__ = ("environ", "start")

    primary_required_error = staticmethod(werkzeug_primary_required)
    environ: WSGIEnvironment
    #: The server's start_response.
    start: StartResponse
    #: The reply that replaced the app's response, if one did.
    replaced_by: Reply | None = None

    def raw_headers(self) -> WSGIEnvironment:
        return self.environ

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None) -> Any:
        routing = self.routing
        # The flag first: the rule's own check, without a call on every response.
        if self.must_end_elsewhere and self.replaces_response(headers):
            reply = self.replaced_by = self._ending()
            status, headers = reply.status_line, list(reply.headers)
        elif routing.rules.read_your_writes:  # a cookie may be due
            headers = headers + self.cookie_headers(self._read_txids())
        if routing.counters.listened and not self.must_end_elsewhere and not self.response_started:
            routing.counters.observe("ran")  # its answer stands: it ran
        self.response_started = True
        tags_for, tags = routing.last_tags  # routing.tags()'s memo, without the call
        if tags_for is not self.state:
            tags = routing.tags(self.state)
        write = self.start(status, OUR_TAGS.tag(headers, tags), exc_info)
        # (replaced_by is only ever set once the request must end elsewhere: the slot's test first)
        return _discarding_write if self.must_end_elsewhere and self.replaced_by is not None else write

    def send_ending(self) -> list[bytes]:
        """Answer with the reply the request must end in (the app's response never started)."""
        return _send_reply(self.start, self._ending(), self.routing.tags(self.state))

    def _ending(self) -> Reply:
        settlement = self.settlement()
        if settlement is None:
            assert self.ending is not None
            return self.ending
        return self.settle(drive(settlement, MountIO(self.routing, functools.partial(_measure_body, self.environ))))

    def _read_txids(self) -> tuple[int | None, ...] | None:
        # Read after the handler ran: the TXIDs must include its writes.
        positions = self.routing.positions
        return positions.read() if positions is not None and self.txid_cookie_due() else None


def _decoded_path(path: str) -> str:
    """The path the app routes on, from the one PEP 3333 hands over.

    That is a latin-1 "native string" of the raw bytes; the app (and
    LiteFS's globs) see it decoded as UTF-8.
    """
    with contextlib.suppress(UnicodeError):
        return path.encode("latin-1").decode("utf-8", "surrogateescape")
    return path


def _send_reply(start_response: StartResponse, reply: Reply, tags: Headers) -> list[bytes]:
    start_response(reply.status_line, OUR_TAGS.tag(reply.headers, tags))
    return [reply.body]


def _measure_body(environ: WSGIEnvironment, limit: int, timeout: float, keep: KeptBody | None) -> int | None:
    """The body's size (reading at most *limit* + 1 bytes), or None if it took over *timeout* seconds.

    The time is checked between reads: a read that stalls ends when the
    server's own read timeout ends it (WSGI gives no way to bound it here).
    """
    # Only a server that marks the input as terminated (gunicorn, Werkzeug
    # for chunked bodies) lets us read to EOF without hanging.
    if not environ.get("wsgi.input_terminated"):
        return 0
    return measure_stream(environ["wsgi.input"].read, limit, timeout, keep)


def _body(environ: WSGIEnvironment, kept: KeptBody, length: int | None) -> Iterator[bytes]:
    """The request body for forwarding: what was measured already, then the rest as it is read."""
    yield from kept.chunks
    stream = environ.get("wsgi.input")
    if stream is None or kept.ended:
        return
    if length is None:  # chunked: to its end, which the server marks (checked before forwarding)
        while chunk := stream.read(_CHUNK):
            yield chunk
        return
    left = length - sum(map(len, kept.chunks))
    while left > 0:
        chunk = stream.read(min(_CHUNK, left))
        if not chunk:
            raise ClientBodyError(f"the client sent {length - left} of the {length} bytes it announced")
        left -= len(chunk)
        yield chunk


def _discarding_write(data: bytes) -> None:
    """The write() callable of a response the middleware replaced."""


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()
