"""What litefs-route knows of web frameworks, each imported only when present.

Framework-native flavours of :class:`~litefs_route._exceptions.PrimaryRequired`.
Why native exceptions: a plain exception becomes a 500 in production Flask
(it only propagates in debug/testing) and Starlette's ServerErrorMiddleware
sends its 500 before an outer middleware sees the exception. The
frameworks' own HTTP exceptions are turned into our response by the
frameworks themselves; the middleware's rewrite covers handlers that eat
them. The WSGI middleware raises the Werkzeug flavour, the ASGI middleware
the Starlette one; without the framework installed, the plain exception.

And the Flask app the WSGI middleware wraps: production Flask turns an
exception into a 500 before the middleware sees it, and on its way logs it
at ERROR and sends ``got_request_exception`` (which Sentry reports). So the
safety net answers in the app's own exception handling, before any of that
(``handle_user_exception``, where Flask looks for error handlers), and
listens to the signal for what fails outside it (``after_request``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from ._exceptions import PrimaryRequired
from ._replies import STAND_IN, Reply

__all__ = ["connect_flask_safety_net", "starlette_primary_required", "werkzeug_primary_required"]

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


def connect_flask_safety_net(wsgi_app: object, report: Callable[[BaseException], bool]) -> int:
    """Hand the exceptions of the Flask apps *wsgi_app* wraps to *report*; how many apps it found.

    An exception *report* claims (True: the middleware ends the request) is
    answered with a stand-in the middleware replaces, in the app's
    ``handle_user_exception``, before Flask's error handlers: so Flask
    neither logs it at ERROR nor sends ``got_request_exception`` (Sentry,
    error mails), and no ``@errorhandler(Exception)`` turns it into a 500.
    Other exceptions go on to Flask's own handling unchanged. What fails
    outside it (``after_request``, teardown) still reaches *report* through
    the app's ``got_request_exception`` signal.

    Found through what WSGI wrappers keep (``app.wsgi_app``'s bound Flask app,
    ``.app`` of Werkzeug's ``ProxyFix`` and most middleware, ``__wrapped__``,
    the mounts of ``DispatcherMiddleware``), a few levels deep. Set on those
    apps only (the signal's sender), never process-wide. Flask is never
    imported here: an app object can only exist if Flask already is.
    """
    flask = sys.modules.get("flask")
    if flask is None:
        return 0

    def on_exception(sender: object, exception: BaseException, **extra: object) -> None:
        report(exception)

    apps = _find(wsgi_app, flask.Flask)
    for app in apps:
        _answer_first(app, report)
        flask.got_request_exception.connect(on_exception, sender=app, weak=False)
    return len(apps)


def _answer_first(app: Any, report: Callable[[BaseException], bool]) -> None:
    """Make *app* (a Flask app) hand each exception of a request to *report* before its own handling."""
    handle = app.handle_user_exception  # Flask's, or an outer middleware's (each gets its turn)

    def handle_user_exception(exc: Exception) -> Any:
        if report(exc):
            return app.response_class(STAND_IN.body, STAND_IN.status, list(STAND_IN.headers))
        return handle(exc)

    app.handle_user_exception = handle_user_exception


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
