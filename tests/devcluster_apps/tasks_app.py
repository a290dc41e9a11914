"""A test app whose primary serves ``call_on_primary`` (``wsgi_app``: bare WSGI; ``asgi_app``: Starlette).

Task ``add_row(label)`` (and ``add_row_async``, a coroutine function):
inserts a row into ``runs`` and returns its id and the instance that ran
it; the table is the count of runs, so a test can tell a task that ran
twice from one that ran once. ``GET /whoami`` answers the instance id.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from litefs_route import asgi, primary_task, serve_tasks_asgi, serve_tasks_wsgi, wsgi

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

INSTANCE = os.environ.get("FLY_MACHINE_ID", "standalone")
OPTIONS: dict[str, Any] = {"cache_ttl": 0.05, "forward_secret": os.environ.get("TASKS_SECRET")}


@primary_task("add_row")
def add_row(label: str) -> dict[str, Any]:
    with sqlite3.connect(os.environ["DATABASE_PATH"], timeout=10) as db:
        db.execute("CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, label TEXT, node TEXT)")
        row = db.execute("INSERT INTO runs (label, node) VALUES (?, ?)", (label, INSTANCE)).lastrowid
    db.close()
    return {"id": row, "node": INSTANCE}


@primary_task("add_row_async")
async def add_row_async(label: str) -> dict[str, Any]:
    return await asyncio.to_thread(add_row, label)  # an async task: awaited (ASGI) or run to completion (WSGI)


@primary_task("boom")
def boom() -> None:
    raise RuntimeError("the task's own error")


def whoami(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [INSTANCE.encode()]


async def whoami_async(request: Request) -> Response:
    return PlainTextResponse(INSTANCE)


wsgi_app = wsgi.PrimaryRoutingMiddleware(serve_tasks_wsgi(whoami), **OPTIONS)
asgi_app = asgi.PrimaryRoutingMiddleware(
    serve_tasks_asgi(Starlette(routes=[Route("/whoami", whoami_async)])), **OPTIONS
)
