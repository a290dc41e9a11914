"""SQLite connections to the replicated database for the registry, the steps and the schema wait."""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
from collections.abc import Iterator

from .halt import halt_lock

__all__ = ["DATABASE_POLL_INTERVAL", "reading", "writing"]

#: Seconds between two readings of the database while waiting on it.
DATABASE_POLL_INTERVAL = 0.1


@contextlib.contextmanager
def writing(db_path: str, instance_id: str | None, halt_timeout: float) -> Iterator[sqlite3.Connection]:
    """A connection that may write: under the HALT lock on a replica, directly on the primary."""
    with halt_lock(db_path, timeout=halt_timeout, instance_id=instance_id):
        conn = sqlite3.connect(db_path, timeout=10, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()


@contextlib.contextmanager
def reading(db_path: str) -> Iterator[sqlite3.Connection]:
    """A read-only connection."""
    uri = pathlib.Path(db_path).resolve().as_uri() + "?mode=ro"  # escaped: a path may hold ? or #
    conn = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()
