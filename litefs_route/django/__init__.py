"""Primary routing for Django, under WSGI and ASGI alike.

::

    # settings.py
    INSTALLED_APPS = [..., "litefs_route.django"]   # the system checks
    MIDDLEWARE = [
        "litefs_route.django.PrimaryRoutingMiddleware",   # first
        "django.middleware.security.SecurityMiddleware",
        ...
    ]
    LITEFS_ROUTE = {"write_on_read": ["/accounts/session/refresh"], "passthrough": ["/static/*"]}

``LITEFS_ROUTE`` holds the options of
:class:`~litefs_route._middleware.RoutingMiddleware`, by the same names and
with the same defaults (``litefs_dir`` from ``$LITEFS_DIR``, ``database``
from ``$DATABASE_FILENAME``, ...); a name that is not an option, or a value
it refuses, is ``ImproperlyConfigured`` when Django loads its middleware.

The middleware is sync and async capable: Django runs it without a thread
hop under WSGI (gunicorn, ``runserver``) and under ASGI (uvicorn, Daphne),
and under ASGI it never blocks the event loop.

What it adds to the WSGI and ASGI middlewares, for Django:

- ``ensure_primary()`` / ``ensure_instance()`` in any view (function,
  class-based, Django REST framework) or in template rendering, even inside
  ``try: ... except Exception:``, ends the request in the replay; Django's
  ``process_exception`` answers it, so Django neither logs it as an error
  nor sends ``got_request_exception`` (Sentry, ``ADMINS`` mail). Its own
  responses (409 replay, 503, 413) are not logged by ``django.request``
  either: a replay is not an error.
- The read-only safety net is on by itself: a write that slips through and
  fails as read-only (``django.db.utils.OperationalError`` wrapping
  SQLite's error) in a view or a template ends in the replay (or a 503),
  not a 500. One raised by another middleware (a session saved on a
  replica) reaches the safety net through ``got_request_exception``, which
  the middleware connects itself; Django has already logged it as an
  error then, and under ASGI Django does not hand the exception to that
  signal, so the 500 stands there. Keep writes in views.
- Django reads no chunked request body (it needs ``Content-Length``), so
  a chunked write is measured as the body Django would hand the view, and
  in forward mode (``"forward": "oversize"``) a chunked write gets 411; a
  forwarded answer is relayed as a ``StreamingHttpResponse`` (an async
  iterator under ASGI).

With ``"litefs_route.django"`` in ``INSTALLED_APPS``, ``manage.py check``
reports what would silently break routing (:mod:`litefs_route.django._checks`).
"""

from __future__ import annotations

from ._middleware import PrimaryRoutingMiddleware

__all__ = ["PrimaryRoutingMiddleware"]
