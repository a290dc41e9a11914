"""The guest book of ``litefs-route dev --postgres``: the SQLite demo's pages, on Postgres (psycopg 3), WSGI.

Each instance reads the server of its own region, ``$DATABASE_URL``: the
primary in the primary region (``$PRIMARY_REGION``), the hot standby
elsewhere (``$FLY_REGION``). The middleware has ``source="postgres"``, so
writes run only in the primary region (another region answers them with
``fly-replay: region=<primary region>``), and there ``$DATABASE_URL`` is the
primary: the app writes through the same connection string it reads from.

- ``GET /``: the entries, who wrote each (instance and region), and a form;
- ``POST /entries`` (form field ``text``): a write, then ``303`` back to
  ``/``; the read-your-writes cookie (``__lsn``) makes the redirected GET
  wait, in another region, until its standby has replayed the write;
- ``GET /visit``: a GET that writes, guarded by ``ensure_primary()``;
- ``GET /healthz``: ``ok``, never routed (``passthrough``);
- ``GET /health``: the middleware's health check (``health_path``): 503 on
  a standby whose replay lag is over ``max_lag`` (or unknown).

Every answer carries ``Demo-Instance`` and ``Demo-Region`` (who ran it), and
``Demo-Replayed-From`` when Fly's proxy (the dev front) replayed the request
here (its ``fly-replay-src``).

Needs psycopg 3 (``pip install 'litefs-route[postgres]'``).
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import psycopg
from psycopg import errors

from litefs_route import ensure_primary, get_instance_info
from litefs_route.wsgi import PrimaryRoutingMiddleware
from litefs_route_devcluster.guest_book_form import entry_text, serve_guest_book
from litefs_route_devcluster.postgres_cluster import DEMO_SCHEMA as SCHEMA

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["HEALTH_PATH", "SCHEMA", "app", "guest_book"]

#: The middleware's health check, which the dev front polls.
HEALTH_PATH = "/health"


def _region() -> str:
    return os.environ.get("FLY_REGION", "")


def _connect() -> psycopg.Connection[tuple[object, ...]]:
    """A connection to this region's server (the app's own, one per request: a demo, not a pool)."""
    return psycopg.connect(os.environ["DATABASE_URL"], connect_timeout=5)


def _index() -> bytes:
    info = get_instance_info()
    with _connect() as db:
        try:
            rows = db.execute("SELECT text, written_on, region FROM entries ORDER BY id DESC LIMIT 100").fetchall()
            visit = db.execute("SELECT count FROM visits").fetchone()
        except errors.UndefinedTable:  # the schema is not there yet (a standby that has not replayed it)
            rows, visit = [], None
    items = "".join(
        f"<li>{html.escape(str(text))} <small>(on {html.escape(str(on))}, {html.escape(str(region))})</small></li>"
        for text, on, region in rows
    )
    primary_region = info.primary_instance or "unknown"
    where = "this region: writes run here" if info.is_primary else "another region: writes are replayed there"
    return f"""<!doctype html><title>litefs-route dev cluster (Postgres)</title>
<h1>Guest book</h1>
<p>This is instance <b>{html.escape(info.current_instance)}</b> in region <b>{html.escape(_region())}</b>;
the primary region is <b>{html.escape(primary_region)}</b> ({where}). Visits: {visit[0] if visit else 0}.</p>
<form method="post" action="/entries"><input name="text" required> <button>Sign</button></form>
<ul>{items}</ul>
<p><a href="/visit">Count a visit</a> (a GET that writes, guarded by ensure_primary())</p>
""".encode()


def _add_entry(environ: WSGIEnvironment) -> None:
    text = entry_text(environ)
    if not text:
        return
    with _connect() as db:  # commits on leaving the block
        db.execute(
            "INSERT INTO entries (text, written_on, region) VALUES (%s, %s, %s)",
            (text, get_instance_info().current_instance, _region()),
        )


def _count_visit() -> None:
    ensure_primary()  # in another region the request ends here, replayed to the primary region
    with _connect() as db:
        db.execute(
            "INSERT INTO visits (id, count) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET count = visits.count + 1"
        )


def guest_book(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The app without the middleware; each answer says where it ran (and where from, if replayed)."""
    who = [("Demo-Instance", get_instance_info().current_instance), ("Demo-Region", _region())]
    if replayed_from := environ.get("HTTP_FLY_REPLAY_SRC"):
        who.append(("Demo-Replayed-From", replayed_from))
    return serve_guest_book(
        environ, start_response, index=_index, add_entry=_add_entry, count_visit=_count_visit, headers=who
    )


app = PrimaryRoutingMiddleware(guest_book, source="postgres", passthrough=["/healthz"], health_path=HEALTH_PATH)
