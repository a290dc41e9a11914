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

Nothing secret is a fact: the forward secret and request bodies never are.
"""

from __future__ import annotations

import re

from ._decision import RequestInfo

__all__ = ["PREFIX", "log_fields", "request_fields"]

#: What every field's name starts with.
PREFIX = "litefs_route_"

# Printable ASCII, no space: a request id is client input, and may end up in plain-text logs.
_REQUEST_ID = re.compile(r"[!-~]{1,128}")


def log_fields(**facts: object) -> dict[str, object]:
    """``extra=`` for a record: each fact that is not None, named ``litefs_route_<fact>``."""
    return {PREFIX + name: value for name, value in facts.items() if value is not None}


def request_fields(request: RequestInfo) -> dict[str, object]:
    """The facts of *request* a record carries (pass into :func:`log_fields` as keywords)."""
    request_id = request.request_id
    return {
        "method": request.method,
        "path": request.path[:200],
        "request_id": request_id if request_id and _REQUEST_ID.fullmatch(request_id) else None,
    }
