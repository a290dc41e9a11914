"""What SQLite's answer to a write proves, when LiteFS is why it failed.

A write that slips past routing (a stale reading, an unflagged GET) fails in
SQLite on a replica; so does a write under way on a primary whose LiteFS is
stopped or killed. The middleware's safety net must tell apart a write that
**did not run** (safe to wait for a primary and replay) from one that **may
have run** (never replayed: its outcome is reported as unknown). Each answer
below was observed on real LiteFS v0.5.14 (``tests/test_litefs_write_failures.py``
keeps each observation as a test):

=============================  ==========================================  ================
SQLite's answer                where it was seen                           class
=============================  ==========================================  ================
``SQLITE_READONLY_DIRECTORY``  first write on a replica (rollback journal:  refused
                               LiteFS refuses the journal), also on an
                               open connection after the lease was handed
                               off
``SQLITE_READONLY_DBMOVED``    see below                                   refused
``SQLITE_READONLY`` (others)   before any page is written                  refused
``SQLITE_CANTOPEN``            opening the database, or its journal, on a   refused
                               mount whose LiteFS died (or, opened with
                               ``mode=rw``, on the empty mount point a
                               stopped LiteFS leaves)
``SQLITE_BUSY``                a write that reached the primary's app as    refused
                               its LiteFS was stopped or killed waits out
                               its busy timeout for a lock it never gets
``SQLITE_IOERR_LOCK``          SIGTERM or kill -9 of LiteFS under an open   refused
(``_CHECKRESERVEDLOCK``)       connection, and at COMMIT in rollback mode
                               after a kill mid-transaction: a lock not
                               taken, always before LiteFS's commit point
``SQLITE_IOERR_WRITE``         first write on a replica in WAL mode; and    i/o error
                               kill -9 of LiteFS mid-transaction (WAL)
``SQLITE_IOERR_*``             kill -9 of LiteFS during a transaction or    i/o error
                               its COMMIT (``_WRITE``, ``_DELETE``,
                               ``_FSTAT``, ``_FSYNC``, ``_RDLOCK``,
                               ``_UNLOCK``...). LiteFS may already have
                               applied and shipped the commit (seen with
                               ``_UNLOCK``, and ``_RDLOCK``: both come
                               from the lock's downgrade after a COMMIT)
``SQLITE_PROTOCOL``            kill -9 of LiteFS as a COMMIT starts, in WAL  i/o error
                               mode (the WAL index went away under it)
=============================  ==========================================  ================

``SQLITE_READONLY_DBMOVED`` (the database file replaced under an open
connection) is checked where SQLite opens the journal, before the first
write; it was seen on LiteFS elsewhere but not reproduced here.

**Refused** answers come before the failing transaction wrote a page (SQLite
opens the journal, checks the file was not moved, and takes its locks before
its first write): nothing of that transaction reached LiteFS. **I/O errors**
can come at COMMIT, after LiteFS committed the transaction. What the request
then ends in depends on this node (:func:`litefs_route._decision.plan_settlement`):
an I/O error proves nothing ran only on a node that was routed as a replica
(it cannot have committed) and whose LiteFS, read right after the failure,
is still running and not the primary (LiteFS checks that it may write before
it applies anything, and answers EACCES: a replica in WAL mode). On a node
routed as the primary it may have run, even where LiteFS is still running:
a graceful stop fails calls after a commit while its mount still answers.

"Nothing ran" is judged on the transaction that failed: a handler that
committed another transaction earlier in the same request has side effects
the middleware cannot see. Keep each write request to one transaction (one
``with conn:``, Django's ``ATOMIC_REQUESTS``, one ``session.commit()``).

``SQLITE_BUSY`` is also what lock contention on a healthy primary gives: it
proves nothing of the transaction ran there too, and it ends in 503 +
``Retry-After`` instead of the app's 500.

Any other error (a constraint, a syntax error, ``no such table``) is the
app's own and is left alone.

Postgres (:func:`classify_postgres_one`, passed to :func:`classify_write_failure`
as *classify_one*): a hot standby answers any write with SQLSTATE ``25006``
(``read_only_sql_transaction``, "cannot execute INSERT in a read-only
transaction") when it plans the statement, before it runs any of it: refused.
psycopg 3 gives the SQLSTATE as ``.sqlstate``, psycopg2 as ``.pgcode``;
Django's and SQLAlchemy's wrappers are followed to them. Every other SQLSTATE
is the app's own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "READ_ONLY_SQL_TRANSACTION",
    "WriteFailure",
    "WriteFailureKind",
    "classify_postgres_one",
    "classify_write_failure",
    "is_readonly_error",
]

# Primary result codes (the low byte of an extended code).
_BUSY = 5
_READONLY = 8
_IOERR = 10
_CANTOPEN = 14
_PROTOCOL = 15
# SQLITE_IOERR_LOCK, _CHECKRESERVEDLOCK: a lock SQLite failed to take or to test (os_unix.c's
# unixLock, unixCheckReservedLock). It takes each before the step that needs it, every one
# before LiteFS's commit point (the journal's deletion, or the WAL's commit frame). Not
# _RDLOCK and _UNLOCK: they come from posixUnlock, which also runs after a COMMIT.
_LOCK_NOT_TAKEN = frozenset({_IOERR | 14 << 8, _IOERR | 15 << 8})

# On Python 3.10 sqlite3's exceptions carry no code: SQLite's message for each primary code.
_MESSAGES = {
    "attempt to write a readonly database": _READONLY,
    "unable to open database file": _CANTOPEN,
    "disk I/O error": _IOERR,
    "locking protocol": _PROTOCOL,
    "database is locked": _BUSY,
}


class WriteFailureKind(enum.Enum):
    """What a failed write proves about whether it ran."""

    #: SQLite refused before the transaction wrote anything (READONLY*, CANTOPEN*, BUSY*, a lock not taken).
    REFUSED = "refused"
    #: An I/O error, possibly at COMMIT after LiteFS applied it (IOERR*, PROTOCOL).
    IO_ERROR = "io-error"


@dataclass(frozen=True, slots=True)
class WriteFailure:
    """A write SQLite failed because of LiteFS: its class, and its code for logs."""

    kind: WriteFailureKind
    #: SQLite's extended result code; None where Python does not give it (3.10).
    code: int | None
    #: The code's name and SQLite's message, for logs (``SQLITE_IOERR_DELETE: disk I/O error``).
    detail: str


#: Postgres's SQLSTATE for a write in a read-only transaction, as on a hot standby.
READ_ONLY_SQL_TRANSACTION = "25006"


def classify_write_failure(
    exc: BaseException, classify_one: Callable[[BaseException], WriteFailure | None] | None = None
) -> WriteFailure | None:
    """The failure *exc* is, or wraps; None if it is the app's own error.

    Follows ``__cause__``/``__context__`` and SQLAlchemy's ``.orig``, so
    Django's and SQLAlchemy's wrappers are recognised too. *classify_one*
    judges each exception of that chain: SQLite's answers under LiteFS (the
    default), or :func:`classify_postgres_one`.
    """
    judge = _classify_one if classify_one is None else classify_one
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        failure = judge(e)
        if failure is not None:
            return failure
        orig = getattr(e, "orig", None)
        todo += [e.__cause__, e.__context__, orig if isinstance(orig, BaseException) else None]
    return None


def is_readonly_error(exc: BaseException) -> bool:
    """True if *exc* is, or wraps, SQLite failing a write because of LiteFS (any class above), or Postgres's ``25006``.

    For an app's own start-up code: a replica (or a hot standby) refuses ``CREATE TABLE``.
    """
    return (
        classify_write_failure(exc) is not None
        or classify_write_failure(exc, classify_one=classify_postgres_one) is not None
    )


def classify_postgres_one(e: BaseException) -> WriteFailure | None:
    """REFUSED if *e* itself is Postgres's ``25006`` (psycopg 3's ``.sqlstate``, psycopg2's ``.pgcode``), else None."""
    sqlstate = getattr(e, "sqlstate", None)
    if sqlstate is None:
        sqlstate = getattr(e, "pgcode", None)
    if sqlstate != READ_ONLY_SQL_TRANSACTION:
        return None
    message = " ".join(str(e).split())  # one line: psycopg2 ends it with a newline, and may add more
    return WriteFailure(WriteFailureKind.REFUSED, None, f"SQLSTATE {READ_ONLY_SQL_TRANSACTION}: {message[:200]}")


def _classify_one(e: BaseException) -> WriteFailure | None:
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int) and not isinstance(code, bool):
        primary, name = code & 0xFF, getattr(e, "sqlite_errorname", None) or f"SQLite error {code}"
    elif type(e).__name__ == "OperationalError" and (found := _by_message(str(e))) is not None:
        primary, name, code = found, _PRIMARY_NAMES[found], None
    else:
        return None
    if primary in (_READONLY, _CANTOPEN, _BUSY) or code in _LOCK_NOT_TAKEN:
        kind = WriteFailureKind.REFUSED
    elif primary in (_IOERR, _PROTOCOL):
        kind = WriteFailureKind.IO_ERROR
    else:
        return None
    return WriteFailure(kind, code, f"{name}: {str(e)[:200]}")


_PRIMARY_NAMES = {
    _READONLY: "SQLITE_READONLY",
    _IOERR: "SQLITE_IOERR",
    _CANTOPEN: "SQLITE_CANTOPEN",
    _PROTOCOL: "SQLITE_PROTOCOL",
    _BUSY: "SQLITE_BUSY",
}


def _by_message(message: str) -> int | None:
    for text, primary in _MESSAGES.items():
        if text in message:
            return primary
    return None
