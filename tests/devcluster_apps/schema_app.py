"""A WSGI app that needs its schema before it starts: it reads a table at import (``litefs-route dev --setup``).

Without the table the import fails and the server never listens, so a
cluster that starts this app proves the setup command ran first, on the
primary, and reached every replica.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING

from litefs_route.wsgi import PrimaryRoutingMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def _read_marker() -> str:
    db = sqlite3.connect(f"file:{os.environ['DATABASE_PATH']}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT made_on FROM setup_marker").fetchone()  # no table: the import fails
    finally:
        db.close()
    return str(row[0])


MADE_ON = _read_marker()


def inner(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    body = f"{os.environ['FLY_MACHINE_ID']} sees setup from {_read_marker()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = PrimaryRoutingMiddleware(inner)
