"""What the rules know of a request: parsed from its raw header values, anything malformed as absent."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._consistency import TxidCookies
from ._secret import Secret

__all__ = ["RequestInfo", "replay_hops", "replay_state"]

# The replay counter travels in fly-replay's `state` field, which Fly's proxy
# hands back in the replayed request's fly-replay-src header.
_STATE_PREFIX = "litefs-route-hop-"
_REPLAY_SRC_STATE = re.compile(r"(?:^|;)\s*state=" + re.escape(_STATE_PREFIX) + r"([0-9]{1,3})\s*(?:;|$)")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_FORWARD_HOP = re.compile(r"[0-9]")
# A fly-replay-src longer than this is not Fly's; we do not scan it.
_REPLAY_SRC_LIMIT = 1024


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
    if not replay_src or len(replay_src) > _REPLAY_SRC_LIMIT:
        return 0
    match = _REPLAY_SRC_STATE.search(replay_src)
    return int(match[1]) if match else 0


def replay_state(hops: int) -> str:
    """The fly-replay `state` value for a replay that is hop number *hops*."""
    return f"{_STATE_PREFIX}{hops}"
