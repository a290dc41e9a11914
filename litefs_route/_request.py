"""What the rules know of a request: parsed from its raw header values, anything malformed as absent."""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._consistency import TxidCookies
from ._secret import Secret

__all__ = [
    "HOP_CGI_KEY",
    "HOP_HEADER",
    "REPLAY_HEADER_LIMIT",
    "SECRET_CGI_KEY",
    "SECRET_HEADER",
    "RequestInfo",
    "from_asgi_headers",
    "from_environ",
    "header_name",
    "replay_hops",
    "replay_state",
    "routing_cgi_keys",
    "routing_header_names",
]

#: The headers a forwarded request carries (lower case): the secret, and how many times it was forwarded.
SECRET_HEADER = "x-litefs-route-forward"  # noqa: S105 (a header's name)
HOP_HEADER = "x-litefs-route-forward-hop"
#: The same, as a WSGI environ and Django's ``request.META`` name them.
SECRET_CGI_KEY = "HTTP_" + SECRET_HEADER.upper().replace("-", "_")
HOP_CGI_KEY = "HTTP_" + HOP_HEADER.upper().replace("-", "_")

# The headers routing reads beyond the method and path. Most requests carry
# none of them: one test in C (a set's isdisjoint) then spares the parsing.
# Content-Length is not among them: Werkzeug and others put an empty one in
# every environ; it is read on its own.
_CGI_KEYS = frozenset(
    {"HTTP_FLY_REPLAY_SRC", "HTTP_FLY_REPLAY_FAILED", SECRET_CGI_KEY, HOP_CGI_KEY, "HTTP_TRANSFER_ENCODING"}
)
_CGI_KEYS_WITH_COOKIE = _CGI_KEYS | {"HTTP_COOKIE"}
# ASGI's names: Content-Length among them (a server sends it only when there is one).
_ASGI_NAMES = frozenset(
    {
        b"fly-replay-src",
        b"fly-replay-failed",
        SECRET_HEADER.encode(),
        HOP_HEADER.encode(),
        b"transfer-encoding",
        b"content-length",
    }
)
_ASGI_NAMES_WITH_COOKIE = _ASGI_NAMES | {b"cookie"}
# Other methods mostly carry a body (a Content-Length): the test would be wasted on them.
_USUALLY_PLAIN = frozenset({"GET", "HEAD", "OPTIONS"})
_SECRET_NAME = SECRET_HEADER.encode()
#: A raw header's name (its first item), read in C: the routing-header test maps it over the headers.
header_name = operator.itemgetter(0)
_HOP_NAME = HOP_HEADER.encode()

# The replay counter travels in fly-replay's `state` field, which Fly's proxy
# hands back in the replayed request's fly-replay-src header.
_STATE_PREFIX = "litefs-route-hop-"
_REPLAY_SRC_STATE = re.compile(r"(?:^|;)\s*state=" + re.escape(_STATE_PREFIX) + r"([0-9]{1,3})\s*(?:;|$)")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_FORWARD_HOP = re.compile(r"[0-9]")
#: A fly-replay-src or fly-replay-failed longer than this is not Fly's: it is not scanned.
REPLAY_HEADER_LIMIT = 1024


# Built on every request: a plain slotted class (a frozen dataclass's
# __init__ costs ~0.5 µs more). Nothing mutates one after it is built.
@dataclass(slots=True)
class RequestInfo:
    """What the rules need to know about a request."""

    method: str
    #: Decoded path, no query string (what the app routes on).
    path: str
    #: The raw ``fly-replay-src`` header, None when absent.
    replay_src: str | None = None
    #: ``Content-Length`` as sent, None when absent or malformed.
    content_length: int | None = None
    #: True when the body's length is unknown (``Transfer-Encoding: chunked``).
    unknown_length: bool = False
    #: The read-your-writes TXID of each database from its cookie (0: no
    #: cookie for it), in the ``database`` option's order; None if none.
    txids: tuple[int, ...] | None = None
    #: The raw ``fly-replay-failed`` header: Fly's proxy could not deliver a
    #: replay of this request and sent it back here. None when absent.
    replay_failed: str | None = None
    #: A WebSocket handshake (routed only on a ``write_sockets`` path).
    websocket: bool = False
    #: The secret a request forwarded by litefs-route claims to carry; None: not forwarded.
    forward_claim: Secret | None = None
    #: How many times litefs-route forwarded it so far (its hop header; 0 if none or malformed).
    forward_hops: int = 0
    #: Both ``Content-Length`` and ``Transfer-Encoding``: where its body ends is ambiguous (refused, 400).
    ambiguous_length: bool = False

    @classmethod
    def from_headers(
        cls,
        method: str,
        path: str,
        *,
        replay_src: str | None,
        content_length: str | None,
        transfer_encoding: str | None,
        cookie: str | None = None,
        txid_cookies: TxidCookies | None = None,
        replay_failed: str | None = None,
        websocket: bool = False,
        forward_claim: str | None = None,
        forward_hop: str | None = None,
    ) -> RequestInfo:
        """Build from raw header values; anything malformed counts as absent.

        *txid_cookies*: the read-your-writes cookies to look for in *cookie*
        (None: read-your-writes is off, no cookie is parsed).
        """
        if not (
            content_length or transfer_encoding or cookie or replay_failed or websocket or forward_claim is not None
        ):
            return cls(method, path, replay_src)  # most reads: nothing to parse
        length = int(content_length) if content_length and _CONTENT_LENGTH.fullmatch(content_length) else None
        chunked = transfer_encoding is not None and "chunked" in transfer_encoding.lower()
        txids = txid_cookies.parse(cookie) if txid_cookies is not None else None
        hops = int(forward_hop) if forward_hop and _FORWARD_HOP.fullmatch(forward_hop) else 0
        # RFC 9112 6.3: a request with both is a likely smuggling attempt; a
        # proxy in front may have framed it the other way. Never guessed at.
        ambiguous = bool(content_length) and bool(transfer_encoding)
        return cls(
            method,
            path,
            replay_src,
            length,
            chunked and length is None,
            txids,
            replay_failed,
            websocket,
            None if forward_claim is None else Secret(forward_claim),
            hops,
            ambiguous,
        )


def replay_hops(replay_src: str | None) -> int:
    """How many times litefs-route already replayed this request (0 if none)."""
    if not replay_src or len(replay_src) > REPLAY_HEADER_LIMIT:
        return 0
    match = _REPLAY_SRC_STATE.search(replay_src)
    return int(match[1]) if match else 0


def replay_state(hops: int) -> str:
    """The fly-replay `state` value for a replay that is hop number *hops*."""
    return f"{_STATE_PREFIX}{hops}"


def routing_cgi_keys(txid_cookies: TxidCookies | None) -> frozenset[str]:
    """The CGI keys of the headers routing reads, Content-Length aside (read on its own: it may be empty).

    A request with none of them and no Content-Length has nothing to parse
    (adapters test it inline, once per middleware's keys, to spare a call).
    """
    return _CGI_KEYS if txid_cookies is None else _CGI_KEYS_WITH_COOKIE


def routing_header_names(txid_cookies: TxidCookies | None) -> frozenset[bytes]:
    """The ASGI header names routing reads (Content-Length among them): without any, nothing to parse."""
    return _ASGI_NAMES if txid_cookies is None else _ASGI_NAMES_WITH_COOKIE


def from_environ(
    environ: Mapping[str, Any], method: str, path: str, txid_cookies: TxidCookies | None
) -> RequestInfo | None:
    """A request from its CGI variables (a WSGI environ, Django's ``META``); *path* decoded, with SCRIPT_NAME.

    None when it carries none of the headers routing reads (most requests):
    then its verdict depends on its method and path alone, and the routing
    remembers it (:meth:`~litefs_route._routing.NodeRouting.route`).
    *txid_cookies*: the read-your-writes cookies (None: off, no cookie is parsed).
    """
    content_length = environ.get("CONTENT_LENGTH")
    if method in _USUALLY_PLAIN and not content_length and environ.keys().isdisjoint(routing_cgi_keys(txid_cookies)):
        return None
    get = environ.get
    return RequestInfo.from_headers(
        method,
        path,
        replay_src=get("HTTP_FLY_REPLAY_SRC"),
        replay_failed=get("HTTP_FLY_REPLAY_FAILED"),
        forward_claim=get(SECRET_CGI_KEY),
        forward_hop=get(HOP_CGI_KEY),
        content_length=content_length,
        transfer_encoding=get("HTTP_TRANSFER_ENCODING"),
        cookie=get("HTTP_COOKIE"),
        txid_cookies=txid_cookies,
    )


def from_asgi_headers(
    method: str,
    path: str,
    headers: Iterable[tuple[bytes, bytes]],
    txid_cookies: TxidCookies | None,
    *,
    websocket: bool = False,
) -> RequestInfo | None:
    """A request from an ASGI scope's method, path and raw headers (lower-case names, as ASGI requires).

    None when it carries none of the headers routing reads, as :func:`from_environ`.
    """
    if not websocket and method in _USUALLY_PLAIN:
        if not isinstance(headers, list | tuple):  # ASGI allows any iterable: read twice, it must be a list
            headers = list(headers)
        # In C: then one test says whether there is anything to parse.
        if routing_header_names(txid_cookies).isdisjoint(map(header_name, headers)):
            return None
    replay_src = content_length = transfer_encoding = replay_failed = forward_claim = forward_hop = None
    cookies: list[str] = []
    for name, value in headers:
        if name == b"cookie":
            cookies.append(value.decode("latin-1"))
        elif name == b"fly-replay-src":
            replay_src = value.decode("latin-1")
        elif name == b"fly-replay-failed":
            replay_failed = value.decode("latin-1")
        elif name == _SECRET_NAME:
            forward_claim = value.decode("latin-1")
        elif name == _HOP_NAME:
            forward_hop = value.decode("latin-1")
        elif name == b"content-length":
            content_length = value.decode("latin-1")
        elif name == b"transfer-encoding":
            transfer_encoding = value.decode("latin-1")
    return RequestInfo.from_headers(
        method,
        path,
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
