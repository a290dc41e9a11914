"""Django system checks for what would silently break routing.

Run by ``manage.py check`` (and ``runserver``, ``migrate``) when
``"litefs_route.django"`` is in ``INSTALLED_APPS``; without it, the
middleware logs the same messages as warnings when Django loads it.
Silence one with ``SILENCED_SYSTEM_CHECKS = ["litefs_route.W002"]``.

``litefs_route.E001``
    ``settings.LITEFS_ROUTE`` is not a dict, names something that is not an
    option, or has a value the middleware refuses.
``litefs_route.E002``
    The LiteFS mount (``LITEFS_ROUTE["litefs_dir"]``, else ``$LITEFS_DIR``)
    is set but is not a directory: no primary is known, every write gets
    503 (at once if the directory does not exist; else after ``primary_wait``).
``litefs_route.E003``
    The middleware comes after one that writes to the database or reads the
    request body (sessions, CSRF, authentication, messages): on a replica
    that work runs before the request is routed, or outside the middleware's
    safety net.
``litefs_route.W001``
    The middleware is not first in ``MIDDLEWARE``: what comes before it runs
    before every request is routed (harmless only if it neither writes nor
    reads the body; the known harmless ones, such as ``SecurityMiddleware``
    and WhiteNoise, are not reported).
``litefs_route.W002``
    A SQLite database in ``DATABASES`` is not inside the LiteFS mount: it is
    not replicated (fine for a per-instance cache, a mistake otherwise).
``litefs_route.W003``
    A SQLite database is in the mount but ``LITEFS_ROUTE["database"]`` (or
    ``$DATABASE_FILENAME``) is not set: read-your-writes is off, so a user may
    not see their own write after a redirect.
``litefs_route.W004``
    ``litefs_route.django`` is installed but its middleware is not in
    ``MIDDLEWARE``: no request is routed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from .._middleware import RoutingMiddleware
from ._middleware import SETTING, options_from_settings

__all__ = ["MIDDLEWARE_PATHS", "check_litefs_route"]

#: How ``MIDDLEWARE`` names this middleware.
MIDDLEWARE_PATHS = frozenset(
    {"litefs_route.django.PrimaryRoutingMiddleware", "litefs_route.django._middleware.PrimaryRoutingMiddleware"}
)

# Before ours, these neither read the request body nor write to the database.
_HARMLESS_BEFORE = frozenset(
    {
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.gzip.GZipMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.http.ConditionalGetMiddleware",
        "whitenoise.middleware.WhiteNoiseMiddleware",
        "corsheaders.middleware.CorsMiddleware",
    }
)
# Before ours, these do what must be routed: why, for the message.
_HARMFUL_BEFORE = {
    "django.contrib.sessions.middleware.SessionMiddleware": "saves sessions (a database write)",
    "django.middleware.csrf.CsrfViewMiddleware": "reads the request body (request.POST)",
    "django.contrib.auth.middleware.AuthenticationMiddleware": "reads and updates the session",
    "django.contrib.messages.middleware.MessageMiddleware": "stores messages (in the session)",
}


def check_litefs_route(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every check of this module (registered by the ``litefs_route.django`` app)."""
    messages = _check_order()
    try:
        options = options_from_settings()
    except ImproperlyConfigured as exc:
        return [*messages, checks.Error(str(exc), id="litefs_route.E001")]
    try:
        RoutingMiddleware(None, **options)  # every option's own validation, at check time
    except (TypeError, ValueError) as exc:
        return [*messages, checks.Error(f"settings.{SETTING}: {exc}", id="litefs_route.E001")]
    mount = os.fspath(options["litefs_dir"]) if options.get("litefs_dir") else os.environ.get("LITEFS_DIR") or None
    if mount is None:
        return messages  # standalone: nothing is routed, nothing more to check
    if not os.path.isdir(mount):
        messages.append(
            checks.Error(
                f"the LiteFS mount {mount!r} is not a directory",
                hint="mount LiteFS there (litefs mount runs the app), or fix litefs_dir / $LITEFS_DIR",
                id="litefs_route.E002",
            )
        )
    return messages + _check_databases(os.path.realpath(mount), options)


def _check_order() -> list[checks.CheckMessage]:
    middleware = list(getattr(settings, "MIDDLEWARE", None) or ())
    position = next((i for i, path in enumerate(middleware) if path in MIDDLEWARE_PATHS), None)
    if position is None:
        return [
            checks.Warning(
                "litefs_route.django is installed but PrimaryRoutingMiddleware is not in MIDDLEWARE",
                hint="add 'litefs_route.django.PrimaryRoutingMiddleware' first in MIDDLEWARE",
                id="litefs_route.W004",
            )
        ]
    before = middleware[:position]
    harmful = [f"{path} ({_HARMFUL_BEFORE[path]})" for path in before if path in _HARMFUL_BEFORE]
    if harmful:
        return [
            checks.Error(
                "PrimaryRoutingMiddleware comes after " + "; ".join(harmful) + ": on a replica that runs unrouted",
                hint="put 'litefs_route.django.PrimaryRoutingMiddleware' first in MIDDLEWARE",
                id="litefs_route.E003",
            )
        ]
    unknown = [path for path in before if path not in _HARMLESS_BEFORE]
    if unknown:
        return [
            checks.Warning(
                f"PrimaryRoutingMiddleware is not first in MIDDLEWARE: {', '.join(unknown)} run before a request "
                "is routed; a write or a body read there runs on a replica",
                hint="put 'litefs_route.django.PrimaryRoutingMiddleware' first in MIDDLEWARE",
                id="litefs_route.W001",
            )
        ]
    return []


def _check_databases(mount: str, options: dict[str, Any]) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    database_option = options.get("database") or os.environ.get("DATABASE_FILENAME")
    for alias, config in getattr(settings, "DATABASES", {}).items():
        if not str(config.get("ENGINE", "")).endswith("sqlite3"):
            continue
        name = os.fspath(config.get("NAME") or "")
        if not name or name == ":memory:" or name.startswith("file:"):
            continue
        path = os.path.realpath(name)
        if os.path.dirname(path) != mount:
            messages.append(
                checks.Warning(
                    f"the SQLite database {alias!r} ({name}) is not in the LiteFS mount {mount}: it is not replicated",
                    hint=f"set DATABASES[{alias!r}]['NAME'] to a file in {mount}, unless it is per instance",
                    id="litefs_route.W002",
                )
            )
        elif not database_option:
            file_name = os.path.basename(path)
            messages.append(
                checks.Warning(
                    f"read-your-writes is off: the SQLite database {alias!r} is in the LiteFS mount, "
                    f"but {SETTING}['database'] is not set",
                    hint=f"set {SETTING} = {{..., 'database': {file_name!r}}} (or $DATABASE_FILENAME)",
                    id="litefs_route.W003",
                )
            )
    return messages
