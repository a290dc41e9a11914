"""Recognising SQLite refusing a write because this node is a LiteFS replica.

A write that slips past routing (a stale reading, an unflagged GET, a write
under way while LiteFS hands the lease off) fails in SQLite; the middleware's
safety net turns that failure into a replay instead of a 500.
"""

from __future__ import annotations

__all__ = ["is_readonly_error"]

# SQLITE_READONLY (8) in rollback mode, SQLITE_IOERR (10) in WAL mode: what
# a write on a LiteFS replica fails with (primary result code = low byte).
_READONLY_CODES = {8, 10}
_READONLY_MESSAGES = ("attempt to write a readonly database", "disk I/O error")


def is_readonly_error(exc: BaseException) -> bool:
    """True if *exc* is, or wraps, SQLite refusing a write on a replica.

    Follows ``__cause__``/``__context__`` and SQLAlchemy's ``.orig``, so
    Django's and SQLAlchemy's wrappers are recognised too.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        code = getattr(e, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _READONLY_CODES:
            return True
        if type(e).__name__ == "OperationalError" and any(m in str(e) for m in _READONLY_MESSAGES):
            return True
        orig = getattr(e, "orig", None)
        todo += [e.__cause__, e.__context__, orig if isinstance(orig, BaseException) else None]
    return False
