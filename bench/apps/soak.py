"""The crash soak's app (``bench/crash_soak.py``), one write route, for both adapters.

- ``asgi``: Starlette (served by uvicorn) behind :class:`litefs_route.asgi.PrimaryRoutingMiddleware`;
- ``wsgi``: Flask (served by gunicorn) behind :class:`litefs_route.wsgi.PrimaryRoutingMiddleware`.

``POST /write`` (body: the value, text) inserts the value into ``soak``
(one plain INSERT, autocommit, a connection per request) and answers 200.
SQLite's errors propagate, as in an app that does not handle them: what the
middleware makes of them is what the soak measures. The table has no
UNIQUE constraint, so a write that ran twice shows as two rows.

Default middleware options; ``SOAK_EVENT_STREAM=off`` adds
``litefs_api_url="off"`` (the mount is polled instead of LiteFS's event stream).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from typing import Any

from flask import Flask
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from litefs_route.asgi import PrimaryRoutingMiddleware as ASGIMiddleware
from litefs_route.wsgi import PrimaryRoutingMiddleware as WSGIMiddleware

__all__ = ["SCHEMA", "TABLE", "asgi_app", "insert", "wsgi_app"]

TABLE = "soak"
SCHEMA = f"CREATE TABLE IF NOT EXISTS {TABLE} (value TEXT NOT NULL, instance TEXT NOT NULL, at REAL NOT NULL)"
INSTANCE = os.environ.get("FLY_MACHINE_ID", "standalone")
OPTIONS: dict[str, Any] = {"litefs_api_url": "off"} if os.environ.get("SOAK_EVENT_STREAM") == "off" else {}

logger = logging.getLogger("soak")
# Timestamps, to line the app's log up with the soak's faults (gunicorn leaves the root logger bare).
_FORMAT = logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
if not logging.getLogger().handlers:
    logging.basicConfig(level=logging.WARNING)
for _handler in logging.getLogger().handlers:
    _handler.setFormatter(_FORMAT)


def insert(value: str) -> None:
    """One autocommit INSERT on this node's copy of the database."""
    path = os.path.join(os.environ["LITEFS_DIR"], os.environ.get("DATABASE_FILENAME", "app.db"))
    try:
        # mode=rw, as docs/exactly-once.md recommends: on the bare mount point a stopped LiteFS
        # leaves, SQLite answers CANTOPEN instead of creating a stray empty database there.
        conn = sqlite3.connect(f"file:{path}?mode=rw", timeout=10, isolation_level=None, uri=True)
        try:
            conn.execute(f"INSERT INTO {TABLE} (value, instance, at) VALUES (?, ?, ?)", (value, INSTANCE, time.time()))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        # Which write met which error: the soak's evidence for a write that ran twice or ended in a 500.
        logger.warning("INSERT of %s failed: %s (%s)", value, exc, getattr(exc, "sqlite_errorname", "?"))
        raise


async def _write(request: Request) -> Response:
    value = (await request.body()).decode()
    await run_in_threadpool(insert, value)
    return JSONResponse({"value": value, "instance": INSTANCE})


asgi_app = Starlette(
    routes=[Route("/write", _write, methods=["POST"])], middleware=[Middleware(ASGIMiddleware, **OPTIONS)]
)

_flask = Flask(__name__)


@_flask.post("/write")
def _flask_write() -> dict[str, str]:
    value = flask_request.get_data(as_text=True)
    insert(value)
    return {"value": value, "instance": INSTANCE}


_flask.wsgi_app = WSGIMiddleware(_flask.wsgi_app, **OPTIONS)  # type: ignore[method-assign]
wsgi_app = _flask
