"""Framework-native flavours of PrimaryRequired, imported lazily.

Why native exceptions: a plain exception becomes a 500 in production Flask
(it only propagates in debug/testing) and Starlette's ServerErrorMiddleware
sends its 500 before an outer middleware sees the exception. The frameworks'
own HTTP exceptions are turned into our response by the frameworks
themselves; the middleware's rewrite covers handlers that eat them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from .context import PrimaryRequired

if TYPE_CHECKING:
    from .routing import Reply

_BODYLESS = {"content-type", "content-length"}


@functools.cache
def _werkzeug_class() -> type[PrimaryRequired] | None:
    try:
        from werkzeug.exceptions import HTTPException
        from werkzeug.wrappers import Response
    except ImportError:
        return None

    class WerkzeugPrimaryRequired(PrimaryRequired, HTTPException):
        # code=None: Flask's handle_http_exception returns code-less HTTP
        # exceptions unchanged *before* looking for user error handlers (the
        # path flask.abort(response) takes), so @errorhandler(Exception),
        # @errorhandler(HTTPException) or @errorhandler(409) cannot eat it.
        code = None

        def __init__(self, reply: Reply) -> None:
            PrimaryRequired.__init__(self, reply)
            response = Response(reply.body, status=reply.status, headers=list(reply.headers))
            HTTPException.__init__(self, description=reply.body.decode(), response=response)

    return WerkzeugPrimaryRequired


@functools.cache
def _starlette_class() -> type[PrimaryRequired] | None:
    try:
        from starlette.exceptions import HTTPException
    except ImportError:
        return None

    class StarlettePrimaryRequired(PrimaryRequired, HTTPException):
        # Starlette's and FastAPI's default handlers copy exc.headers.
        def __init__(self, reply: Reply) -> None:
            PrimaryRequired.__init__(self, reply)
            headers = {k: v for k, v in reply.headers if k.lower() not in _BODYLESS}
            HTTPException.__init__(self, status_code=reply.status, detail=reply.body.decode(), headers=headers)

        def __str__(self) -> str:
            return PrimaryRequired.__str__(self)

    return StarlettePrimaryRequired


def primary_required(reply: Reply, adapter: str) -> PrimaryRequired:
    """The exception ensure_primary() raises, native to the framework if any."""
    cls = _werkzeug_class() if adapter == "wsgi" else _starlette_class()
    return (cls or PrimaryRequired)(reply)
