"""The facts of each record the ``litefs_route`` logger writes, as ``extra`` fields.

Every record carries its facts as attributes named ``litefs_route_<fact>``
(the prefix keeps them clear of ``LogRecord``'s own attributes, ``msg``,
``name``, ``process``, ...): a JSON formatter (python-json-logger,
structlog's stdlib bridge) writes them as keys, a plain formatter ignores
them. The names, one list (``docs/observability.md`` shows each):

``event``            what happened, a stable name (``role_changed``, ``safety_net``, ``forward_failed``, ...)
``reason``           why, in words (a 503's reason, SQLite's error, an exception's text)
``method``, ``path``, ``request_id``   the request's: the path without its query, at most 200
                     characters; ``Fly-Request-Id``, else ``X-Request-Id``, if printable and
                     at most 128 characters
``status``           the status the request was answered with
``target``           the instance it was replayed or forwarded to
``primary``, ``role``, ``previous_role``   the node's primary and role (a role change's)
``waited_seconds``, ``outcome``   a wait for a primary or a TXID: how long, how it ended
``database``, ``api_url``   the HALT lock's or position's database; LiteFS's API
``counter``, ``amount``, ``cause``   a count (at DEBUG)
``task``, ``callback``   a task's name; a role-change hook's
``command``, ``pid``   what ``litefs-route supervise`` runs, and its process

Nothing secret is a fact: the forward secret and request bodies never are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ._request import RequestInfo

__all__ = ["PREFIX", "RawHeaders", "log_fields", "request_fields", "request_id"]

#: What every field's name starts with.
PREFIX = "litefs_route_"

#: Headers as a server hands them over: CGI-style (a WSGI environ, Django's ``META``), or ASGI's bytes pairs.
RawHeaders = Mapping[str, Any] | Iterable[tuple[bytes, bytes]]

_ID_HEADERS = frozenset({b"fly-request-id", b"x-request-id"})
# Printable ASCII, no space: a request id is client input, and may end up in plain-text logs.
_REQUEST_ID = re.compile(r"[!-~]{1,128}")


def log_fields(**facts: object) -> dict[str, object]:
    """``extra=`` for a record: each fact that is not None, named ``litefs_route_<fact>``."""
    return {PREFIX + name: value for name, value in facts.items() if value is not None}


def request_fields(request: RequestInfo, raw_headers: RawHeaders | None = None) -> dict[str, object]:
    """The facts of *request* a record carries (pass into :func:`log_fields` as keywords).

    *raw_headers*: its headers as its server gave them, where its request id is read.
    """
    return {
        "method": request.method,
        "path": request.path[:200],
        "request_id": None if raw_headers is None else request_id(raw_headers),
    }


def request_id(raw: RawHeaders) -> str | None:
    """``Fly-Request-Id``, else ``X-Request-Id``, in headers as a server gave them; None if neither is one."""
    if isinstance(raw, Mapping):  # WSGI's environ, Django's META
        found = raw.get("HTTP_FLY_REQUEST_ID") or raw.get("HTTP_X_REQUEST_ID")
    else:
        ids = {name.lower(): value for name, value in raw if name.lower() in _ID_HEADERS}
        value = ids.get(b"fly-request-id") or ids.get(b"x-request-id")
        found = None if value is None else value.decode("latin-1")
    return found if isinstance(found, str) and _REQUEST_ID.fullmatch(found) else None
