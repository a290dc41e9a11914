"""What litefs-route knows of web frameworks, each imported only when present.

Framework-native flavours of :class:`~litefs_route.exceptions.PrimaryRequired`.
Why native exceptions: a plain exception becomes a 500 in production Flask
(it only propagates in debug/testing) and Starlette's ServerErrorMiddleware
sends its 500 before an outer middleware sees the exception. The
frameworks' own HTTP exceptions are turned into our response by the
frameworks themselves; the middleware's rewrite covers handlers that eat
them. The WSGI middleware raises the Werkzeug flavour, the ASGI middleware
the Starlette one; without the framework installed, the plain exception.

And Flask's ``got_request_exception`` signal: production Flask turns an
exception into a 500 before the middleware sees it, so the safety net
listens to the signal of the Flask app it wraps.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from .exceptions import PrimaryRequired
from .replies import Reply

__all__ = ["connect_flask_exception_signal", "starlette_primary_required", "werkzeug_primary_required"]

_BODYLESS = {"content-type", "content-length"}


def werkzeug_primary_required(reply: Reply) -> PrimaryRequired:
    """The exception ``ensure_primary()`` raises under the WSGI middleware."""
    return (_werkzeug_class() or PrimaryRequired)(reply)


def starlette_primary_required(reply: Reply) -> PrimaryRequired:
    """The exception ``ensure_primary()`` raises under the ASGI middleware."""
    return (_starlette_class() or PrimaryRequired)(reply)


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

        def __str__(self) -> str:  # not HTTPException's "??? Unknown Error" (code is None)
            return PrimaryRequired.__str__(self)

    return _named(WerkzeugPrimaryRequired)


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

    return _named(StarlettePrimaryRequired)


def _named(cls: type[PrimaryRequired]) -> type[PrimaryRequired]:
    """*cls* as tracebacks and error trackers should name it: this module's, not a function's local."""
    cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return cls


def connect_flask_exception_signal(wsgi_app: object, report: Callable[[BaseException], object]) -> int:
    """Send the unhandled exceptions of the Flask apps *wsgi_app* wraps to *report*; how many it found.

    Found through what WSGI wrappers keep (``app.wsgi_app``'s bound Flask app,
    ``.app`` of Werkzeug's ``ProxyFix`` and most middleware, ``__wrapped__``,
    the mounts of ``DispatcherMiddleware``), a few levels deep. Connected for
    those apps only (the signal's sender), never process-wide. Flask is never
    imported here: an app object can only exist if Flask already is.
    """
    flask = sys.modules.get("flask")
    if flask is None:
        return 0

    def on_exception(sender: object, exception: BaseException, **extra: object) -> None:
        report(exception)

    apps = _find(wsgi_app, flask.Flask)
    for app in apps:
        flask.got_request_exception.connect(on_exception, sender=app, weak=False)
    return len(apps)


def _find(root: object, cls: type, depth: int = 4) -> list[object]:
    """Instances of *cls* reachable from *root* through what WSGI wrappers keep."""
    found: list[object] = []
    seen: set[int] = set()
    layer = [root]
    for _ in range(depth):
        following: list[object] = []
        for obj in layer:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, cls):
                found.append(obj)
                continue
            for name in ("__self__", "app", "wsgi_app", "__wrapped__"):
                inner = getattr(obj, name, None)
                if inner is not None:
                    following.append(inner)
            mounts = getattr(obj, "mounts", None)
            if isinstance(mounts, dict):
                following += mounts.values()
        layer = following
    return found
