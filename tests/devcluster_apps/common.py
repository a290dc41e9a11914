"""The database side shared by the dev-cluster test apps: one table of writes.

Each write carries a unique id (UNIQUE constraint) and records which instance
ran it, so a test can tell a write that ran twice from one that ran once.
A connection is opened per request, as LiteFS apps usually do.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

from litefs_route._sqlite_errors import is_readonly_error

INSTANCE = os.environ.get("FLY_MACHINE_ID", "standalone")
CACHE_TTL = float(os.environ.get("DEVCLUSTER_CACHE_TTL", "0.05"))
PRIMARY_WAIT = float(os.environ.get("DEVCLUSTER_PRIMARY_WAIT", "5"))
REPLAY_TIMEOUT = float(os.environ.get("DEVCLUSTER_REPLAY_TIMEOUT", "5"))
#: Forward mode ("off" unless set), and a JSON file the test writes once the ports are known: {instance: URL}.
FORWARD = os.environ.get("DEVCLUSTER_FORWARD", "off")


def forward_url(instance: str) -> str:
    with open(os.environ["DEVCLUSTER_FORWARD_MAP"]) as f:
        return str(json.load(f)[instance])


if "DEVCLUSTER_ESTABLISHED_AFTER" in os.environ:  # bench/established_bench.py compares the hold with none
    import litefs_route._state_cache

    litefs_route._state_cache.ESTABLISHED_AFTER = float(os.environ["DEVCLUSTER_ESTABLISHED_AFTER"])

#: The middleware's options, the same for the ASGI and the WSGI app.
MIDDLEWARE_OPTIONS: dict[str, Any] = {
    "cache_ttl": CACHE_TTL,
    "primary_wait": PRIMARY_WAIT,
    "replay_timeout": REPLAY_TIMEOUT,
    "forward": FORWARD,
    "forward_url": forward_url,
}


def db_path() -> str:
    return os.path.join(os.environ["LITEFS_DIR"], os.environ.get("DATABASE_FILENAME", "app.db"))


def connect() -> sqlite3.Connection:
    return sqlite3.connect(db_path(), timeout=10, isolation_level=None)


def init_schema() -> None:
    """Create the table on the primary; a replica gets it by replication.

    ``DEVCLUSTER_JOURNAL_MODE=wal`` switches the database to WAL mode first.
    """
    conn = connect()
    try:
        if os.environ.get("DEVCLUSTER_JOURNAL_MODE"):
            conn.execute(f"PRAGMA journal_mode={os.environ['DEVCLUSTER_JOURNAL_MODE']}")
        conn.execute("CREATE TABLE IF NOT EXISTS writes (id TEXT PRIMARY KEY, instance TEXT NOT NULL, body TEXT)")
    except sqlite3.OperationalError as exc:
        # A replica refuses: "readonly" in rollback mode, "disk I/O error" in WAL mode.
        if not is_readonly_error(exc):
            raise
    finally:
        conn.close()


def record_write(write_id: str, body: str = "") -> tuple[int, dict[str, str]]:
    """Insert one write; (status, JSON payload). A duplicate id is a 500 the tests look for."""
    conn = connect()
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT INTO writes (id, instance, body) VALUES (?, ?, ?)", (write_id, INSTANCE, body))
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK")
            return 500, {"error": "duplicate", "id": write_id, "instance": INSTANCE}
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        return 500, {"error": str(exc), "id": write_id, "instance": INSTANCE}
    finally:
        conn.close()
    return 200, {"id": write_id, "instance": INSTANCE}


def record_write_unguarded(write_id: str) -> dict[str, str]:
    """Insert one write and let SQLite's errors propagate: what the read-only safety net must catch."""
    conn = connect()
    try:
        conn.execute("INSERT INTO writes (id, instance) VALUES (?, ?)", (write_id, INSTANCE))
    finally:
        conn.close()
    return {"id": write_id, "instance": INSTANCE}


def held_write(write_id: str, hold: str) -> dict[str, str]:
    """Insert one write, stopping where the test says until it says go; SQLite's errors propagate.

    *hold*: ``"open"`` stops before the database is opened, ``"commit"``
    between the INSERT and the COMMIT. The test sees ``<id>.held`` appear in
    ``$DEVCLUSTER_HOLD_DIR``, does what it needs (kills LiteFS), then creates
    ``<id>.go``. One transaction: what the safety net's "nothing ran" assumes.
    """
    gate = os.path.join(os.environ["DEVCLUSTER_HOLD_DIR"], write_id)

    def wait_for_go() -> None:
        with open(gate + ".held", "w"):
            pass
        deadline = time.monotonic() + 60
        while not os.path.exists(gate + ".go"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test never released {write_id}")
            time.sleep(0.01)

    if hold == "open":
        wait_for_go()
    conn = connect()
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO writes (id, instance) VALUES (?, ?)", (write_id, INSTANCE))
        if hold == "commit":
            wait_for_go()
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {"id": write_id, "instance": INSTANCE}


def read_write(write_id: str) -> dict[str, str] | None:
    conn = connect()
    try:
        row = conn.execute("SELECT id, instance FROM writes WHERE id = ?", (write_id,)).fetchone()
    except sqlite3.OperationalError:
        return None  # the table has not replicated here yet
    finally:
        conn.close()
    return None if row is None else {"id": row[0], "instance": row[1], "read_on": INSTANCE}


def dumps(payload: object) -> bytes:
    return json.dumps(payload).encode()
