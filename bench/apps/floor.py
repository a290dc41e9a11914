"""The least any middleware that tags responses can cost: the floor.

It does nothing but add the two headers litefs-route adds to every response
(``Fly-Primary-Instance``, ``Fly-Instance``, constant values) by wrapping
``send`` / ``start_response``. No mount, no decision, no context. Whatever it
costs against the bare app is the server's and framework's price for a
wrapped ``send`` and two more response headers (h11 and gunicorn validate
and serialise every header), which no implementation of the issue's "tag
every response" can avoid; litefs-route's own cost is what it adds on top.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bench.apps.naive import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["FloorASGI", "FloorWSGI"]

_TAGS = [("Fly-Primary-Instance", "3d8d9e5b711e68"), ("Fly-Instance", "bench-self")]
_RAW_TAGS = [(name.lower().encode(), value.encode()) for name, value in _TAGS]


class FloorASGI:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *_RAW_TAGS]}
            await send(message)

        await self.app(scope, receive, tagged_send)


class FloorWSGI:
    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        def tagged_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Any:
            return start_response(status, headers + _TAGS, exc_info)

        return self.app(environ, tagged_start_response)
