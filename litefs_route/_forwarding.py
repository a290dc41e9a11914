"""Forward mode: a replica sends a write to the primary itself, and relays the answer.

For the writes Fly's proxy cannot replay (a body over 1 MB) or, with
``forward="always"``, every write (deployments without Fly's edge). The
request goes over the private network to ``forward_url``, streaming both
ways with bounded memory: the body is never held whole, nor the response.

Security: the forwarded request carries the cluster's ``forward_secret`` in
:data:`SECRET_HEADER`; the primary's middleware runs it only with the right
secret (403 otherwise, the app not called) and strips it before the app sees
the request. Exactly once: nothing is retried once a byte has left; a
connection that fails before that is a 503 (not sent: send it again), after
it a 502 (it may have run).

The header rules (hop-by-hop, ``Forwarded``, ``X-Forwarded-*``) are here
once; the blocking client serves WSGI, the asyncio client ASGI.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from ._log_fields import log_fields, request_fields
from ._replies import Reply, forward_failure_reply
from ._request import HOP_CGI_KEY, HOP_HEADER, SECRET_CGI_KEY, SECRET_HEADER, RequestInfo
from ._secret import Secret

__all__ = [
    "DEFAULT_FORWARD_URL",
    "HOP_CGI_KEY",
    "HOP_HEADER",
    "SECRET_CGI_KEY",
    "SECRET_ENV",
    "SECRET_HEADER",
    "ClientBodyError",
    "ForwardTarget",
    "ForwardURL",
    "OutgoingForward",
    "Relay",
    "cgi_headers",
    "cgi_raw_target",
    "cgi_server",
    "cgi_target",
    "client_address",
    "drop_forward_claim",
    "forward_async",
    "forward_blocking",
    "forwarded_headers",
    "relayed_headers",
    "request_target",
    "resolve_forward_url",
]

logger = logging.getLogger("litefs_route")

#: Where the primary is on Fly: its Machine on the private network (the app's internal port).
DEFAULT_FORWARD_URL = "http://{instance}.vm.{app}.internal:8080"
#: The environment variable ``forward_secret`` defaults to.
SECRET_ENV = "LITEFS_ROUTE_FORWARD_SECRET"  # noqa: S105 (a variable's name, not a secret)

# Hop-by-hop headers (RFC 9110 7.6.1), never forwarded either way; plus our own.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",  # the body is streamed at once: no 100-continue to wait for
        "content-length",  # framing: set again for the body as it is sent
        SECRET_HEADER,
        HOP_HEADER,
    }
)
_CHUNK = 65536
# A header this module writes must be a token and a value without CR, LF,
# NUL or other controls (RFC 9110 5.1, 5.5): anything else could become a
# header line of its own. Servers refuse such bytes today; we do not rely on it.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
# What a request target may hold as it is: visible ASCII. Anything else is percent-encoded.
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))
# The largest response head accepted from the primary.
_HEAD_LIMIT = 65536

ForwardURL = str | Callable[[str], str]


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    """The primary's address for forwarded requests."""

    host: str
    port: int
    #: A path prefix from the URL (usually empty).
    prefix: str
    #: For messages: the instance id.
    instance: str


@dataclass(frozen=True, slots=True)
class OutgoingForward:
    """A request about to be forwarded: where, with which headers, and how its body is framed."""

    target: ForwardTarget
    #: The headers to send, but the secret (see :meth:`wire_headers`).
    headers: list[tuple[str, str]]
    #: The cluster's secret, sent in :data:`SECRET_HEADER` (its repr hides it).
    secret: Secret
    #: The body is sent chunked (its length is unknown); else it is *length* bytes.
    chunked: bool
    length: int | None
    #: Seconds to connect, and for each read and write (``forward_timeout``).
    timeout: float
    #: The ``Retry-After`` of a 503 when nothing was sent.
    retry_after: int

    def wire_headers(self) -> list[tuple[str, str]]:
        """The headers as sent, the secret included: read only by the code that sends them."""
        return [*self.headers, (SECRET_HEADER, self.secret.reveal())]


def resolve_forward_url(forward_url: ForwardURL, instance: str) -> ForwardTarget:
    """Where *instance* answers forwarded requests: ``forward_url`` formatted (``{instance}``, ``{app}``) or called.

    Raises ValueError for a URL that is not ``http://host[:port][/prefix]``.
    """
    if callable(forward_url):
        url = forward_url(instance)
    else:
        url = forward_url.format(instance=instance, app=os.environ.get("FLY_APP_NAME", ""))
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"forward_url must give http://host:port, got {url!r}")
    return ForwardTarget(parts.hostname, parts.port or 80, parts.path.rstrip("/"), instance)


def forwarded_headers(
    headers: Iterable[tuple[str, str]],
    *,
    client: str | None,
    scheme: str,
    hop: int,
    content_length: int | None,
    default_host: str = "localhost",
) -> list[tuple[str, str]]:
    """The request's headers as forwarded: hop-by-hop ones dropped, the client recorded, our hop count added.

    ``X-Forwarded-For`` gets the client's address appended (its earlier
    values kept, as every proxy does), ``Forwarded`` a ``for``/``proto``/
    ``host`` element (RFC 7239); ``X-Forwarded-Proto`` and ``-Host`` are set
    only where absent (an earlier proxy knows better). The ``Host`` header is
    kept: the app builds its URLs from it; a request without one (HTTP/1.0)
    gets *default_host* (the server it reached), as HTTP/1.1 requires one.
    *content_length* None: the body is sent chunked. A header whose name is
    no token or whose value holds CR, LF, NUL or another control is dropped.
    The secret is not among them: the sender adds it (:meth:`OutgoingForward.wire_headers`).
    """
    headers = _safe_headers(headers)
    client = client_address(client)  # an IP address, or nothing: it is written into two headers
    listed = {
        token.strip().lower() for name, value in headers if name.lower() == "connection" for token in value.split(",")
    }
    kept = [(n, v) for n, v in headers if n.lower() not in _HOP_BY_HOP and n.lower() not in listed]
    names = {n.lower() for n, _ in kept}
    host = next((v for n, v in kept if n.lower() == "host"), None)
    earlier_for = ", ".join(v for n, v in kept if n.lower() == "x-forwarded-for")
    kept = [(n, v) for n, v in kept if n.lower() != "x-forwarded-for"]
    if client:
        kept.append(("X-Forwarded-For", f"{earlier_for}, {client}" if earlier_for else client))
        node = f'"[{client}]"' if ":" in client else client
        element = f"for={node};proto={scheme}" + (f';host="{host}"' if host and '"' not in host else "")
        kept.append(("Forwarded", element))
    elif earlier_for:
        kept.append(("X-Forwarded-For", earlier_for))
    if "x-forwarded-proto" not in names:
        kept.append(("X-Forwarded-Proto", scheme))
    if host and "x-forwarded-host" not in names:
        kept.append(("X-Forwarded-Host", host))
    if host is None:  # (the server's own name: still checked, as everything written here)
        kept.insert(0, ("Host", default_host if _safe_headers([("Host", default_host)]) else "localhost"))
    kept.append((HOP_HEADER, str(hop)))
    if content_length is not None:
        kept.append(("Content-Length", str(content_length)))
    else:
        kept.append(("Transfer-Encoding", "chunked"))
    return kept


def request_target(target: str) -> str:
    """*target* (path and query) as it may go on the wire: anything but visible ASCII percent-encoded.

    Servers hand over a raw target as a latin-1 string of its bytes (PEP 3333)
    or as text; a raw UTF-8 target is encoded back to its bytes and escaped,
    which the primary decodes to the same path. ``%`` is kept as it is: what
    was escaped stays escaped exactly once.
    """
    if target.isascii() and target.isprintable() and " " not in target:
        return target
    return quote(_text_bytes(target), safe=_TARGET_SAFE)


def _text_bytes(text: str) -> bytes:
    """The bytes a server's string stands for: latin-1 (PEP 3333's native strings), else UTF-8."""
    for encoding, errors in (("latin-1", "strict"), ("utf-8", "surrogateescape"), ("utf-8", "surrogatepass")):
        with contextlib.suppress(UnicodeEncodeError):
            return text.encode(encoding, errors)
    raise AssertionError("surrogatepass encodes any str")


def cgi_raw_target(environ: Mapping[str, Any]) -> str | None:
    """The path and query as the client sent them, where the server keeps a copy (gunicorn, Werkzeug); else None."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    return raw if isinstance(raw, str) and raw.startswith("/") else None


def cgi_target(environ: Mapping[str, Any]) -> str:
    """The path and query as the client sent them: the server's raw copy where it keeps one, else rebuilt.

    Rebuilt from ``SCRIPT_NAME``, ``PATH_INFO`` and ``QUERY_STRING``, which
    PEP 3333 gives as latin-1 strings of the bytes. The path is decoded once
    already: a ``%`` in it is a character and is escaped again (``%25``), or
    the primary would decode it a second time (``%252F`` must not become ``/``).
    """
    raw = cgi_raw_target(environ)
    if raw is not None:
        return raw
    path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    quoted = quote(_text_bytes(path), safe="/:@!$&'()*+,;=-._~")
    query = environ.get("QUERY_STRING")
    return f"{quoted}?{query}" if query else quoted


def cgi_server(environ: Mapping[str, Any]) -> str | None:
    """The ``host:port`` a request reached, from a CGI-style mapping (for a request that named no ``Host``)."""
    name, port = environ.get("SERVER_NAME"), environ.get("SERVER_PORT")
    return f"{name}:{port}" if name and port else None


def drop_forward_claim(environ: MutableMapping[str, Any]) -> None:
    """Remove a forwarded request's secret and hop count from a CGI-style mapping: they are not the app's business."""
    environ.pop(SECRET_CGI_KEY, None)
    environ.pop(HOP_CGI_KEY, None)


def cgi_headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A request's headers from a CGI-style mapping (a WSGI environ, Django's ``request.META``)."""
    headers = [
        (key[5:].replace("_", "-").title(), str(value)) for key, value in environ.items() if key.startswith("HTTP_")
    ]
    if environ.get("CONTENT_TYPE"):
        headers.append(("Content-Type", str(environ["CONTENT_TYPE"])))
    return headers


def relayed_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The primary's response headers as relayed: hop-by-hop ones dropped, and unsafe ones.

    ``Content-Length`` is kept, unless the primary also sent
    ``Transfer-Encoding`` (which wins, RFC 9112 6.3): the body relayed is
    then the decoded one, of a length no header announced.
    """
    headers = _safe_headers(headers)
    listed = {
        token.strip().lower() for name, value in headers if name.lower() == "connection" for token in value.split(",")
    }
    keep_length = not any(n.lower() == "transfer-encoding" for n, _ in headers)
    return [
        (n, v)
        for n, v in headers
        if (keep_length and n.lower() == "content-length") or (n.lower() not in _HOP_BY_HOP and n.lower() not in listed)
    ]


def _safe_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """*headers* without those that could break a header block: a name that is no token, a value with controls."""
    safe = []
    for name, value in headers:
        if _TOKEN.fullmatch(name) and not _BAD_VALUE.search(value):
            safe.append((name, value))
        else:
            logger.debug(
                "dropped a header that is not safe to write: %r",
                name[:64],
                extra=log_fields(event="header_dropped", reason="not safe to write"),
            )
    return safe


# -- WSGI: blocking -----------------------------------------------------------------------------


class _Relayed:
    """The primary's response body as a WSGI iterable: read as it is sent, the connection closed after."""

    __slots__ = ("conn", "response", "target")

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, target: str) -> None:
        self.conn, self.response, self.target = conn, response, target

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                data = self.response.read1(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                # The status is sent: all that is left is to cut the response short.
                logger.warning(
                    "the primary (%s) failed while its response was relayed: %r",
                    self.target,
                    exc,
                    extra=log_fields(event="relay_failed", target=self.target, reason=repr(exc)),
                )
                raise
            if not data:
                return
            yield data

    def close(self) -> None:
        self.response.close()
        self.conn.close()


@dataclass(slots=True)
class Relay:
    """What :func:`forward_blocking` got back: the primary's status, headers and body (an iterable to return)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: Iterable[bytes]


def forward_blocking(forward: OutgoingForward, method: str, path_qs: str, body: Iterable[bytes]) -> Relay | Reply:
    """Send the request as *forward* says and return the response to relay, or the reply that says what went wrong.

    Blocking (a WSGI worker thread). *body* is sent as read (chunked when
    ``forward.chunked``), never held whole. Never retried.
    """
    target, chunked, retry_after = forward.target, forward.chunked, forward.retry_after
    conn = http.client.HTTPConnection(target.host, target.port, timeout=forward.timeout)
    try:
        conn.connect()
    except OSError as exc:
        conn.close()
        logger.warning(
            "could not forward a write to the primary %s: %r (not sent)",
            target.instance,
            exc,
            extra=_forward_fields("forward_not_sent", forward, method, path_qs, repr(exc)),
        )
        return forward_failure_reply(target.instance, False, f"cannot connect: {exc}", retry_after)
    try:
        conn.putrequest(method, target.prefix + request_target(path_qs), skip_host=True, skip_accept_encoding=True)
        for name, value in forward.wire_headers():
            conn.putheader(name, value)
        conn.endheaders()
        for chunk in body:
            if chunk:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            conn.send(b"0\r\n\r\n")
    except ClientBodyError as exc:  # the client's side: nothing to wait for from the primary
        conn.close()
        logger.warning(
            "a write forwarded to the primary %s was cut short by its client: %s",
            target.instance,
            exc,
            extra=_forward_fields("forward_cut_short", forward, method, path_qs, str(exc)),
        )
        return forward_failure_reply(target.instance, True, str(exc), retry_after)
    except OSError as exc:
        # The primary may have answered early (a refusal) and closed: relay that answer if it is there.
        with contextlib.suppress(OSError, http.client.HTTPException):
            return _relay(conn, conn.getresponse(), target)
        conn.close()
        logger.warning(
            "forwarding a write to the primary %s failed after it was sent: %r",
            target.instance,
            exc,
            extra=_forward_fields("forward_failed", forward, method, path_qs, repr(exc)),
        )
        return forward_failure_reply(target.instance, True, f"{exc}", retry_after)
    except BaseException:
        conn.close()
        raise
    try:
        response = conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        logger.warning(
            "the primary %s did not answer a forwarded write: %r",
            target.instance,
            exc,
            extra=_forward_fields("forward_unanswered", forward, method, path_qs, repr(exc)),
        )
        return forward_failure_reply(target.instance, True, f"no answer: {exc!r}", retry_after)
    return _relay(conn, response, target)


def _forward_fields(event: str, forward: OutgoingForward, method: str, path_qs: str, reason: str) -> dict[str, object]:
    """A forwarding record's facts: the path without its query (it may hold tokens), never the secret."""
    raw = [(name.encode("latin-1", "replace"), value.encode("latin-1", "replace")) for name, value in forward.headers]
    request = RequestInfo(method, path_qs.partition("?")[0])
    return log_fields(event=event, target=forward.target.instance, reason=reason, **request_fields(request, raw))


def _relay(conn: http.client.HTTPConnection, response: http.client.HTTPResponse, target: ForwardTarget) -> Relay:
    headers = relayed_headers(response.getheaders())
    reason = response.reason if _TOKEN.fullmatch(response.reason.replace(" ", "")) else ""  # echoed in a status line
    return Relay(response.status, reason, headers, _Relayed(conn, response, target.instance))


# -- ASGI: asyncio streams ----------------------------------------------------------------------

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ClientBodyError(Exception):
    """The client's body ended before it said it would (raised by a body iterator): the forward is abandoned."""


class _Lost(Exception):
    """The connection to the primary failed; *sent*: after bytes of the request left."""

    def __init__(self, sent: bool, detail: str) -> None:
        super().__init__(detail)
        self.sent = sent


async def forward_async(
    forward: OutgoingForward,
    method: str,
    path_qs: str,
    prefix: Iterable[bytes],
    receive: Receive | None,
    send: Send,
    reply: Callable[[Reply], Awaitable[None]],
) -> None:
    """Send the request as *forward* says, with asyncio streams, and relay its answer through *send*.

    The body is *prefix* (what was already read), then what *receive*
    delivers; sent as it arrives, with the writer drained after each piece.
    A failure before the primary's answer starts goes through *reply* (503
    not sent / 502 may have run); after it, the response is cut short.
    """
    target, timeout, retry_after = forward.target, forward.timeout, forward.retry_after
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), timeout)
    except (OSError, asyncio.TimeoutError, RuntimeError) as exc:  # RuntimeError: not an asyncio loop (trio)
        logger.warning(
            "could not forward a write to the primary %s: %r (not sent)",
            target.instance,
            exc,
            extra=_forward_fields("forward_not_sent", forward, method, path_qs, repr(exc)),
        )
        await reply(forward_failure_reply(target.instance, False, f"cannot connect: {exc!r}", retry_after))
        return
    try:
        try:
            await _send_request(writer, forward, method, path_qs, prefix, receive)
            status, response_headers = await _read_head(reader, timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            raise _Lost(True, repr(e)) from e
        await send({"type": "http.response.start", "status": status, "headers": _encode(response_headers)})
        await _relay_body(reader, send, method, status, response_headers, timeout, target.instance)
    except _Lost as lost:
        logger.warning(
            "forwarding a write to the primary %s failed after it was sent: %s",
            target.instance,
            lost,
            extra=_forward_fields("forward_failed", forward, method, path_qs, str(lost)),
        )
        await reply(forward_failure_reply(target.instance, lost.sent, str(lost), retry_after))
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1)


async def _send_request(
    writer: asyncio.StreamWriter,
    forward: OutgoingForward,
    method: str,
    path_qs: str,
    prefix: Iterable[bytes],
    receive: Receive | None,
) -> None:
    head = f"{method} {forward.target.prefix}{request_target(path_qs)} HTTP/1.1\r\n"
    head += "".join(f"{n}: {v}\r\n" for n, v in forward.wire_headers()) + "\r\n"
    writer.write(head.encode("latin-1"))
    chunked, timeout, announced = forward.chunked, forward.timeout, forward.length
    sent = 0

    async def write(chunk: bytes) -> None:
        nonlocal sent
        if chunk:
            sent += len(chunk)
            if announced is not None and sent > announced:  # never let a body spill into a next request
                raise OSError(f"the body is longer than the {announced} bytes announced")
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await asyncio.wait_for(writer.drain(), timeout)  # backpressure: memory stays bounded

    for chunk in prefix:
        await write(chunk)
    more = receive is not None
    while more and receive is not None:
        message = await receive()
        if message["type"] != "http.request":
            raise OSError("the client went away before its body was complete")
        await write(message.get("body", b""))
        more = message.get("more_body", False)
    if chunked:
        writer.write(b"0\r\n\r\n")
    await asyncio.wait_for(writer.drain(), timeout)


async def _read_head(reader: asyncio.StreamReader, timeout: float) -> tuple[int, list[tuple[str, str]]]:
    while True:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if len(raw) > _HEAD_LIMIT:
            raise ValueError("the primary's response head is too large")
        lines = raw.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest.partition(" ")[0]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ValueError(f"not an HTTP/1.1 response: {lines[0][:80]!r}")
        status = int(code)
        if 100 <= status < 200:
            continue  # 100 Continue and friends: the final answer follows
        headers = []
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ValueError(f"a malformed header line: {line[:80]!r}")
                headers.append((name.strip(), value.strip()))
        return status, headers


async def _relay_body(
    reader: asyncio.StreamReader,
    send: Send,
    method: str,
    status: int,
    headers: list[tuple[str, str]],
    timeout: float,
    instance: str,
) -> None:
    """The primary's body, chunk by chunk; a failure now can only cut the response short."""
    lower = {n.lower(): v for n, v in headers}
    try:
        if method == "HEAD" or status in (204, 304):
            pass
        elif "chunked" in lower.get("transfer-encoding", "").lower():
            while True:
                size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while (await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)) != b"\r\n":
                        pass  # trailers: dropped
                    break
                while size > 0:
                    data = await asyncio.wait_for(reader.read(min(size, _CHUNK)), timeout)
                    if not data:
                        raise asyncio.IncompleteReadError(b"", size)
                    size -= len(data)
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                await asyncio.wait_for(reader.readexactly(2), timeout)
        elif "content-length" in lower:
            left = int(lower["content-length"])
            while left > 0:
                data = await asyncio.wait_for(reader.read(min(left, _CHUNK)), timeout)
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(data)
                await send({"type": "http.response.body", "body": data, "more_body": True})
        else:
            while data := await asyncio.wait_for(reader.read(_CHUNK), timeout):
                await send({"type": "http.response.body", "body": data, "more_body": True})
    except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        logger.warning(
            "the primary (%s) failed while its response was relayed: %r",
            instance,
            e,
            extra=log_fields(event="relay_failed", target=instance, reason=repr(e)),
        )
        raise  # the server cuts the response short: the client must not take it as complete
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _encode(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in relayed_headers(headers)]


def client_address(host: str | None) -> str | None:
    """A client address as ``Forwarded`` and ``X-Forwarded-For`` carry it (None: unknown)."""
    if not host:
        return None
    with contextlib.suppress(OSError, ValueError):
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return host
    return None
