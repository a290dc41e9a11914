"""The job every recipe runs: one row in ``ticks`` per run, saying which recipe and which node ran it.

``python -m examples.background.jobs SOURCE`` runs it once (the cron recipe).
The database is ``$LITEFS_DIR/$DATABASE_FILENAME`` (``$DATABASE_PATH`` if
set), as in the other examples: on a replica the write fails, which is why
each recipe runs it only on the primary.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import time


def database() -> str:
    path = os.environ.get("DATABASE_PATH")
    if path:
        return path
    return os.path.join(os.environ.get("LITEFS_DIR") or ".", os.environ.get("DATABASE_FILENAME", "app.db"))


def record(source: str) -> int:
    """Write one tick; returns its row id."""
    with contextlib.closing(sqlite3.connect(database(), timeout=10)) as db, db:
        db.execute("CREATE TABLE IF NOT EXISTS ticks (id INTEGER PRIMARY KEY, source TEXT, node TEXT, at REAL)")
        node = os.environ.get("FLY_MACHINE_ID", "local")
        row = db.execute("INSERT INTO ticks (source, node, at) VALUES (?, ?, ?)", (source, node, time.time()))
        return int(row.lastrowid or 0)


if __name__ == "__main__":
    print(record(sys.argv[1] if len(sys.argv) > 1 else "cli"))
