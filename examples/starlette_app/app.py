"""The same guest book on Starlette + SQLite behind litefs-route (ASGI).

SQLite calls are blocking, so the endpoints are plain ``def`` functions:
Starlette runs them in a worker thread, and ``ensure_primary()`` and
``get_instance_info()`` work there too.
"""

from __future__ import annotations

import contextlib
import html
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from litefs_route import ensure_primary, get_instance_info
from litefs_route.asgi import PrimaryRoutingMiddleware

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY, text TEXT NOT NULL, written_on TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS visits (id INTEGER PRIMARY KEY CHECK (id = 1), count INTEGER NOT NULL);
"""


def database_path() -> Path:
    folder = os.environ.get("LITEFS_DIR") or "."
    return Path(folder) / os.environ.get("DATABASE_FILENAME", "app.db")


def connect() -> sqlite3.Connection:
    db = sqlite3.connect(database_path(), timeout=5)
    db.row_factory = sqlite3.Row
    return db


def init_db() -> None:
    """Create the schema where that is allowed: only the primary can write."""
    if get_instance_info().is_primary:
        with connect() as db:
            db.executescript(SCHEMA)


def index(request: Request) -> Response:
    info = get_instance_info()
    try:
        with connect() as db:
            rows = db.execute("SELECT text, written_on FROM entries ORDER BY id DESC").fetchall()
            visits = db.execute("SELECT count FROM visits").fetchone()
    except sqlite3.OperationalError:  # a replica whose copy has no schema yet
        rows, visits = [], None
    items = "".join(
        f"<li>{html.escape(r['text'])} <small>(on {html.escape(r['written_on'])})</small></li>" for r in rows
    )
    return HTMLResponse(f"""<!doctype html><title>litefs-route Starlette example</title>
<h1>Guest book</h1>
<p>This is instance <b>{info.current_instance}</b>; the primary is <b>{info.primary_instance or "unknown"}</b>
({"this instance" if info.is_primary else "another instance"}). Visits: {visits["count"] if visits else 0}.</p>
<form method="post" action="/entries"><input name="text" required> <button>Sign</button></form>
<ul>{items}</ul>
<p><a href="/visit">Count a visit</a> (a GET that writes, guarded by ensure_primary())</p>""")


async def add_entry(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    text = (form.get("text") or [""])[0].strip()[:500]
    if text:
        await run_in_threadpool(_insert_entry, text)
    return RedirectResponse("/", status_code=303)


def _insert_entry(text: str) -> None:
    with connect() as db:
        db.execute("INSERT INTO entries (text, written_on) VALUES (?, ?)", (text, get_instance_info().current_instance))


def visit(request: Request) -> Response:
    ensure_primary()  # on a replica the request ends here, replayed to the primary
    with connect() as db:
        db.execute("INSERT INTO visits (id, count) VALUES (1, 1) ON CONFLICT(id) DO UPDATE SET count = count + 1")
    return RedirectResponse("/", status_code=303)


def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await run_in_threadpool(init_db)
    yield


app = Starlette(
    routes=[
        Route("/", index),
        Route("/entries", add_entry, methods=["POST"]),
        Route("/visit", visit),
        Route("/healthz", healthz),
    ],
    middleware=[Middleware(PrimaryRoutingMiddleware, passthrough=["/healthz"])],
    lifespan=lifespan,
)
