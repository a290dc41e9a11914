"""What the three apps share: the connection, the SQL, and the middleware's options."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import psycopg

from litefs_route import routing_counters
from litefs_route._routing import every_routing

#: This instance's id (the middleware reads the same variable).
INSTANCE = os.environ.get("FLY_MACHINE_ID", "standalone")

#: The table every app reads and writes; the tests create it on the primary.
SCHEMA = "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL, instance text NOT NULL)"


def middleware_options() -> dict[str, Any]:
    """The middleware's options: Postgres as the source, the health check, and what the test adds."""
    options: dict[str, Any] = {"source": "postgres", "health_path": "/health", "cache_ttl": 0.05}
    options.update(json.loads(os.environ.get("LITEFS_ROUTE_JSON") or "{}"))
    return options


def log_to_stderr() -> None:
    """Every record at INFO and above on stderr, one line each: the server's log, where the tests look for errors."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("LOG %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def connect() -> psycopg.Connection[tuple[Any, ...]]:
    """A new connection to the local server (``$DATABASE_URL``): one per request."""
    return psycopg.connect(os.environ["DATABASE_URL"], connect_timeout=5)


def insert_item(name: str) -> dict[str, Any]:
    """Insert one row and commit; psycopg's errors propagate (25006 on a standby)."""
    with connect() as conn:
        row = conn.execute(
            "INSERT INTO items (name, instance) VALUES (%s, %s) RETURNING id", (name, INSTANCE)
        ).fetchone()
    assert row is not None
    return {"id": row[0], "instance": INSTANCE}


def list_items() -> dict[str, Any]:
    with connect() as conn:
        rows = conn.execute("SELECT id, name, instance FROM items ORDER BY id").fetchall()
    return {"items": [{"id": r[0], "name": r[1], "instance": r[2]} for r in rows], "instance": INSTANCE}


def state() -> dict[str, Any]:
    """Reads waiting for their LSN right now, and the middleware's counters (this process)."""
    waiting = sum(r.positions.waiting for r in every_routing() if r.positions is not None)
    return {"waiting": waiting, "counters": routing_counters(), "instance": INSTANCE}
