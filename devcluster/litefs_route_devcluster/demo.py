"""The app ``litefs-route dev`` runs when given none: a guest book, WSGI, standard library only.

It needs nothing installed beyond litefs-route, so the dev cluster's demo
works from a plain ``pip install litefs-route``. Each instance keeps the
book in ``$LITEFS_DIR/$DATABASE_FILENAME`` (its own mount folder):

- ``GET /``: the entries, who wrote each, who is primary, and a form;
- ``POST /entries`` (form field ``text``): a write (a replica replays it to
  the primary), then ``303`` back to ``/`` (read-your-writes: the redirected
  GET sees the entry on whichever instance it lands);
- ``GET /visit``: a GET that writes, guarded by ``ensure_primary()``;
- ``GET /healthz``: ``ok``, never routed (``passthrough``);
- ``GET /litefs/health``: the middleware's health check (``health_path``),
  which the dev cluster's front checks to keep failing instances out of rotation.
"""

from __future__ import annotations

import html
import os
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING

from litefs_route import ensure_primary, get_instance_info, is_readonly_error
from litefs_route.wsgi import PrimaryRoutingMiddleware
from litefs_route_devcluster.guest_book_form import entry_text, serve_guest_book

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["app"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY, text TEXT NOT NULL, written_on TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS visits (id INTEGER PRIMARY KEY CHECK (id = 1), count INTEGER NOT NULL);
"""


def _connect() -> sqlite3.Connection:
    folder = os.environ.get("LITEFS_DIR") or "."
    return sqlite3.connect(os.path.join(folder, os.environ.get("DATABASE_FILENAME", "app.db")), timeout=5)


def _init_schema() -> None:
    """Create the tables where that is allowed: a replica gets them by replication."""
    if not get_instance_info().is_primary:
        return
    db = _connect()
    try:
        with db:
            db.executescript(SCHEMA)
    except sqlite3.OperationalError as exc:
        if not is_readonly_error(exc):
            raise
    finally:
        db.close()


def _index() -> bytes:
    info = get_instance_info()
    db = _connect()
    try:
        rows = db.execute("SELECT text, written_on FROM entries ORDER BY id DESC LIMIT 100").fetchall()
        visits = db.execute("SELECT count FROM visits").fetchone()
    except sqlite3.OperationalError:  # a replica whose copy has no schema yet
        rows, visits = [], None
    finally:
        db.close()
    items = "".join(f"<li>{html.escape(text)} <small>(on {html.escape(on)})</small></li>" for text, on in rows)
    primary = info.primary_instance or "unknown"
    where = "this instance" if info.is_primary else "another instance"
    return f"""<!doctype html><title>litefs-route dev cluster</title>
<h1>Guest book</h1>
<p>This is instance <b>{html.escape(info.current_instance)}</b>; the primary is <b>{html.escape(primary)}</b>
({where}). Visits: {visits[0] if visits else 0}.</p>
<form method="post" action="/entries"><input name="text" required> <button>Sign</button></form>
<ul>{items}</ul>
<p><a href="/visit">Count a visit</a> (a GET that writes, guarded by ensure_primary())</p>
""".encode()


def _add_entry(environ: WSGIEnvironment) -> None:
    text = entry_text(environ)
    if not text:
        return
    db = _connect()
    try:
        with db:
            db.execute(
                "INSERT INTO entries (text, written_on) VALUES (?, ?)", (text, get_instance_info().current_instance)
            )
    finally:
        db.close()


def _count_visit() -> None:
    ensure_primary()  # on a replica the request ends here, replayed to the primary
    db = _connect()
    try:
        with db:
            db.execute("INSERT INTO visits (id, count) VALUES (1, 1) ON CONFLICT(id) DO UPDATE SET count = count + 1")
    finally:
        db.close()


def guest_book(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The app without the middleware."""
    return serve_guest_book(environ, start_response, index=_index, add_entry=_add_entry, count_visit=_count_visit)


_init_schema()
# /litefs/health: the dev front's health check (`litefs-route dev --health-path`).
app = PrimaryRoutingMiddleware(guest_book, passthrough=["/healthz"], health_path="/litefs/health")
