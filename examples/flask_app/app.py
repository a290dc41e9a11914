"""A small guest book on Flask + SQLite behind litefs-route.

- ``GET /`` lists the entries (runs on any instance).
- ``POST /entries`` adds one (a write: replayed to the primary on a replica),
  then redirects back to the list.
- ``GET /visit`` counts a visit: a GET that writes, guarded by
  ``ensure_primary()`` as a session refresh would be.
- ``GET /healthz`` is passthrough: answered by every instance, never routed.
"""

from __future__ import annotations

import html
import os
import sqlite3
from pathlib import Path

from flask import Flask, redirect, request
from werkzeug.wrappers import Response

from litefs_route import ensure_primary, get_instance_info
from litefs_route.wsgi import PrimaryRoutingMiddleware

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


app = Flask(__name__)


@app.get("/")
def index() -> str:
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
    return f"""<!doctype html><title>litefs-route Flask example</title>
<h1>Guest book</h1>
<p>This is instance <b>{info.current_instance}</b>; the primary is <b>{info.primary_instance or "unknown"}</b>
({"this instance" if info.is_primary else "another instance"}). Visits: {visits["count"] if visits else 0}.</p>
<form method="post" action="/entries"><input name="text" required> <button>Sign</button></form>
<ul>{items}</ul>
<p><a href="/visit">Count a visit</a> (a GET that writes, guarded by ensure_primary())</p>"""


@app.post("/entries")
def add_entry() -> Response:
    text = request.form.get("text", "").strip()[:500]
    if text:
        with connect() as db:
            db.execute(
                "INSERT INTO entries (text, written_on) VALUES (?, ?)", (text, get_instance_info().current_instance)
            )
    return redirect("/", code=303)


@app.get("/visit")
def visit() -> Response:
    ensure_primary()  # on a replica the request ends here, replayed to the primary
    with connect() as db:
        db.execute("INSERT INTO visits (id, count) VALUES (1, 1) ON CONFLICT(id) DO UPDATE SET count = count + 1")
    return redirect("/", code=303)


@app.get("/healthz")
def healthz() -> str:
    return "ok"


app.wsgi_app = PrimaryRoutingMiddleware(app.wsgi_app, passthrough=["/healthz"])  # type: ignore[method-assign]
init_db()
