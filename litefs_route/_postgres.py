"""Where a Postgres server's WAL is: positions (LSNs) for read-your-writes on read replicas.

A write on the primary leaves the primary's WAL position (``pg_current_wal_lsn()``)
in the client's cookie; a read on a hot standby may be answered there once the
standby has replayed up to it (``pg_last_wal_replay_lsn()``). This module
parses and prints those positions, and reads them over one connection of its
own (:class:`PostgresPositionReader`), never over a request's transaction.

Standard library only at import time: psycopg 3 (``pip install
'litefs-route[postgres]'``) is imported when a reader is made.

A position is an ``int``, the 64-bit WAL location; its text is PostgreSQL's
``XXXXXXXX/XXXXXXXX``: the high and low 32 bits in hexadecimal, 1 to 8 digits
each (PostgreSQL prints upper case without leading zeros: ``0/3001148``).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from ._log_fields import log_fields
from ._secret import Secret

if TYPE_CHECKING:
    import psycopg

__all__ = ["POLL_INTERVAL", "RECONNECT_DELAY", "PostgresPositionReader", "format_lsn", "parse_lsn"]

logger = logging.getLogger("litefs_route.postgres")

#: How often :meth:`PostgresPositionReader.wait_for` reads the position while it waits (seconds).
POLL_INTERVAL = 0.01
#: After a failed connection attempt, calls answer None without trying again for this long (seconds):
#: a server that is down is not asked to accept a connection per request and per poll.
RECONNECT_DELAY = 0.5

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_LSN_MAX_TEXT = 17  # 8 + "/" + 8
_LSN_LIMIT = 1 << 64

_EXTRA = "litefs-route[postgres]"
_HIDDEN = "********"

# This server's position: the WAL it replayed while it is a standby, the WAL it wrote otherwise.
_POSITION_SQL = (
    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text"
)
# The same, only while it is a standby (NULL on a primary).
_STANDBY_POSITION_SQL = "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() END)::text"
_RECOVERY_SQL = "SELECT pg_is_in_recovery()"
_LAG_SQL = (
    "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,"
    " (extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000)::bigint"
)


def parse_lsn(text: str) -> int | None:
    """The position *text* names (``16/B374D848``), or None if it is not one.

    Never raises, and costs at most a few dozen steps whatever *text* is: it
    parses client cookies.
    """
    if not isinstance(text, str) or len(text) > _LSN_MAX_TEXT:
        return None
    found = _LSN.fullmatch(text)
    if found is None:
        return None
    return int(found[1], 16) << 32 | int(found[2], 16)


def format_lsn(n: int) -> str:
    """*n* as PostgreSQL prints a position (``16/B374D848``); ValueError outside 0 to 2**64 - 1."""
    if not 0 <= n < _LSN_LIMIT:
        raise ValueError(f"a WAL position is 0 to 2**64 - 1, not {n}")
    return f"{n >> 32:X}/{n & 0xFFFFFFFF:X}"


def _import_psycopg() -> Any:
    """psycopg 3, or ImportError naming the extra that installs it."""
    try:
        import psycopg
    except ImportError:
        pass
    else:
        return psycopg
    # Raised outside the except block: no chained traceback, only the fix.
    raise ImportError(f"litefs-route's Postgres support needs psycopg 3: pip install '{_EXTRA}'", name="psycopg")


class PostgresPositionReader:
    """Reads one Postgres server's WAL position over a connection of its own, shared by every thread.

    *dsn*: a libpq connection string or URL for the server (the local
    replica, or the primary). The connection is opened at the first call
    (autocommit, ``statement_timeout`` = *query_timeout*), kept, and reopened
    after any error; one lock serialises its use, so threads share it. A
    call made on a connection that went stale (the server restarted) tries
    once more on a new one before it gives up.

    Nothing here raises because the server is down: :meth:`position`,
    :meth:`in_recovery` and :meth:`replay_lag_ms` answer None, and the first
    failure after a success is logged (WARNING, ``litefs_route.postgres``).
    After a failed connection attempt the next one waits
    :data:`RECONNECT_DELAY`; calls meanwhile answer None at once.
    The DSN's password is never shown: not in ``repr``, logs or exceptions.

    *connect_timeout* is rounded up to whole seconds (libpq's unit; libpq
    waits at least 2 s). A server that stops answering mid-query without
    closing the connection can hold a call, and the lock, until the TCP
    connection fails.
    """

    def __init__(self, dsn: str, *, connect_timeout: float = 2.0, query_timeout: float = 1.0) -> None:
        if not connect_timeout > 0 or not query_timeout > 0:
            raise ValueError("connect_timeout and query_timeout are positive numbers of seconds")
        self._psycopg = _import_psycopg()
        self._dsn = Secret(dsn)
        self._passwords = tuple(Secret(p) for p in _passwords(dsn))
        self._shown = self._redact(dsn)
        self.connect_timeout = connect_timeout
        self.query_timeout = query_timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._failing = False
        self._retry_at = 0.0
        problem = self._invalid(dsn)
        if problem is not None:
            raise ValueError(f"invalid Postgres connection string {self._shown}: {problem}")

    def __repr__(self) -> str:
        return f"PostgresPositionReader({self._shown!r})"

    # -- what the server says ---------------------------------------------------

    def position(self, *, standby_only: bool = False) -> int | None:
        """This server's position: replayed WAL on a standby, written WAL on a primary; None if unknown.

        None when the server cannot be reached (or, on a standby, before it
        replayed anything). *standby_only*: None on a server that is not a
        standby either (a promoted one no longer receives its old primary's
        WAL: its own position says nothing of the primary's writes).
        """
        row = self._fetch(_STANDBY_POSITION_SQL if standby_only else _POSITION_SQL)
        return None if row is None or row[0] is None else parse_lsn(row[0])

    def in_recovery(self) -> bool | None:
        """True on a standby (``pg_is_in_recovery()``), False on a primary, None if the server cannot be reached."""
        row = self._fetch(_RECOVERY_SQL)
        return None if row is None else bool(row[0])

    def replay_lag_ms(self, *, standby_only: bool = False) -> int | None:
        """How far behind this server's data is, in milliseconds; 0 on a primary; None if unknown.

        *standby_only*: None on a server that is not a standby (outside the
        primary region, a promoted server follows no primary: its lag means nothing).

        On a standby: 0 when it has replayed all the WAL it received (a
        standby idle with its primary is not behind, however old its last
        replayed transaction is); otherwise the time since the commit of the
        last transaction it replayed (``pg_last_xact_replay_timestamp()``,
        the primary's clock against this server's). So a standby cut off
        from its primary, having replayed what it got, reads 0: lag measures
        replay, not the network. None when the server cannot be reached, or
        is behind but has replayed no transaction yet.
        """
        row = self._fetch(_LAG_SQL)
        if row is None:
            return None
        recovering, received, replayed, since_ms = row
        if not recovering:
            return None if standby_only else 0
        received_at, replayed_at = parse_lsn(received or ""), parse_lsn(replayed or "")
        if received_at is not None and replayed_at is not None and replayed_at >= received_at:
            return 0
        return None if since_ms is None else max(0, int(since_ms))

    def wait_for(self, lsn: int, timeout: float) -> bool:
        """True as soon as :meth:`position` reaches *lsn*; False once *timeout* seconds passed without.

        Reads the position every :data:`POLL_INTERVAL` seconds, holding the
        connection's lock only while it reads. It may overrun *timeout* by
        one read (a connection attempt, at most *connect_timeout*).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed:
            now = self.position()
            if now is not None and now >= lsn:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(POLL_INTERVAL, remaining))
        return False

    def close(self) -> None:
        """Close the connection; every later call answers None (``wait_for``: False). Idempotent."""
        with self._lock:
            self._closed = True
            self._drop()

    # -- the connection ---------------------------------------------------------

    def _fetch(self, sql: str) -> tuple[Any, ...] | None:
        """The first row of *sql*, or None if the server cannot be reached (logged)."""
        with self._lock:
            for _ in range(2):
                if self._closed:
                    return None
                fresh = self._conn is None
                if fresh and time.monotonic() < self._retry_at:
                    return None  # it failed a moment ago: not yet again
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    row: tuple[Any, ...] | None = self._conn.execute(sql).fetchone()
                except Exception as exc:  # any failure: the connection is not trusted again
                    self._drop()
                    if fresh:
                        self._retry_at = time.monotonic() + RECONNECT_DELAY
                        self._report(exc)
                        return None
                    continue  # stale: one more try, on a new connection
                if self._failing:
                    self._failing = False
                    logger.info(
                        "Postgres at %s answers again",
                        self._shown,
                        extra=log_fields(event="postgres_reachable"),
                    )
                return row
        return None

    def _connect(self) -> psycopg.Connection[Any]:
        settings = self._psycopg.conninfo.conninfo_to_dict(self._dsn.reveal())
        extra: dict[str, Any] = {"connect_timeout": max(1, math.ceil(self.connect_timeout))}
        if "application_name" not in settings:
            extra["application_name"] = "litefs-route"
        conn: psycopg.Connection[Any] = self._psycopg.connect(
            self._dsn.reveal(), autocommit=True, prepare_threshold=None, **extra
        )
        try:
            timeout_ms = str(max(1, math.ceil(self.query_timeout * 1000)))
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout_ms,))
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # closing a broken connection: nothing left to do
                logger.debug("closing the Postgres connection failed: %s", self._redact(str(exc)))

    def _report(self, exc: BaseException) -> None:
        reason = self._describe(exc)
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        logger.log(
            level,
            "Postgres at %s cannot be reached: %s",
            self._shown,
            reason,
            extra=log_fields(event="postgres_unreachable", reason=reason),
        )

    def _invalid(self, dsn: str) -> str | None:
        """What is wrong with *dsn* as libpq reads it (password hidden), or None."""
        try:
            self._psycopg.conninfo.conninfo_to_dict(dsn)
        except self._psycopg.Error as exc:
            return self._describe(exc)
        return None

    def _describe(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return self._redact(f"{type(exc).__name__}: {text}")[:300]  # hidden before it is cut: no half password

    def _redact(self, text: str) -> str:
        """*text* with the DSN's password, and anything shaped like a password in a DSN, hidden."""
        for password in self._passwords:
            text = text.replace(password.reveal(), _HIDDEN)
        return _redact_shapes(text)


# A URL's user information (scheme://user:password@), and a password=value keyword or query parameter.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@?#]*:)[^\s@/?#]*@")
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|[^\s&'\"]*)", re.IGNORECASE)


def _redact_shapes(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: m[1] + _HIDDEN + "@", text)
    return _KEYWORD_PASSWORD.sub(lambda m: m[1] + _HIDDEN, text)


def _passwords(dsn: str) -> list[str]:
    """Every form the password of *dsn* may take in a message: as written, and decoded. Never raises."""
    found: list[str] = []
    if "://" in dsn:
        userinfo = dsn.split("://", 1)[1].split("@", 1)
        if len(userinfo) == 2 and ":" in userinfo[0].rsplit("/", 1)[-1]:
            raw = userinfo[0].split(":", 1)[1]
            found += [raw, urllib.parse.unquote(raw)]
        query = dsn.split("?", 1)[1] if "?" in dsn else ""
        for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if name.lower() == "password":
                found += [value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)]
    for match in re.finditer(r"\bpassword\s*=\s*('((?:[^'\\]|\\.)*)'|(\S+))", dsn, re.IGNORECASE):
        quoted, plain = match[2], match[3]
        if quoted is not None:
            found += [quoted, re.sub(r"\\(.)", r"\1", quoted)]
        else:
            found.append(plain)
    # Longest first: a password that contains another form of itself is hidden whole.
    return sorted({p for p in found if p}, key=len, reverse=True)
