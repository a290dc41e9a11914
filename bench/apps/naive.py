"""The naive middleware that hand-written LiteFS integrations use.

It reads ``$LITEFS_DIR/.primary`` with ``open().read()`` on every request
(a FUSE round trip on a real LiteFS mount) and, if the file names a primary,
answers every non-read with ``409`` + ``fly-replay: instance=<primary>``.
No cache, no tags, no replay counter: the baseline litefs-route replaces.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["NaiveASGI", "NaiveWSGI", "read_primary"]

READS = frozenset({"GET", "HEAD", "OPTIONS"})
_BODY = b"replaying to the primary\n"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def read_primary(litefs_dir: str) -> str | None:
    """The primary's id, or None on the primary: read from disk every time."""
    try:
        with open(os.path.join(litefs_dir, ".primary")) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


class NaiveASGI:
    def __init__(self, app: ASGIApp, litefs_dir: str) -> None:
        self.app = app
        self.litefs_dir = litefs_dir

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            primary = read_primary(self.litefs_dir)
            if primary is not None and scope["method"] not in READS:
                headers = [
                    (b"fly-replay", b"instance=" + primary.encode()),
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(_BODY)).encode()),
                ]
                await send({"type": "http.response.start", "status": 409, "headers": headers})
                await send({"type": "http.response.body", "body": _BODY})
                return
        await self.app(scope, receive, send)


class NaiveWSGI:
    def __init__(self, app: WSGIApplication, litefs_dir: str) -> None:
        self.app = app
        self.litefs_dir = litefs_dir

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        primary = read_primary(self.litefs_dir)
        if primary is not None and environ["REQUEST_METHOD"] not in READS:
            start_response(
                "409 Conflict",
                [
                    ("fly-replay", f"instance={primary}"),
                    ("Content-Type", "text/plain"),
                    ("Content-Length", str(len(_BODY))),
                ],
            )
            return [_BODY]
        return self.app(environ, start_response)
