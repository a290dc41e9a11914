"""Read-your-writes: the TXID cookies and the watchers that wake waiting reads.

The failure it prevents (LiteFS issue #301): a form POST is replayed to the
primary, which redirects to a GET; the GET lands on a replica that has not
received the write yet, and the user does not see their own change.

- On the primary, a request routed as a write gets ``Set-Cookie: __txid=<16
  hex>`` with the database's TXID read from ``<db>-pos`` *after* the handler
  ran: LiteFS's proxy format, so the two interoperate. With several
  databases (one mount can hold several; ``database=["app.db", "cache.db"]``)
  each database the request changed gets its own cookie
  (:class:`TxidCookies`: ``__txid`` for the first, ``__txid_cache.db``...).
- On a replica, a read carrying cookies ahead of the local TXIDs waits for
  replication to catch up on every one of them, then runs; if the wait times
  out the read is replayed to the primary, which has the data.
- The primary never waits. A cookie ahead of the primary's own TXID (TXIDs go
  backwards after a failover that lost writes) is ignored and cleared.

Waiting costs no polling while LiteFS's event stream is up: its ``tx``
events (:mod:`litefs_route._subscriber`) advance the :class:`PositionWatcher`,
which wakes every waiter whose TXID has been reached
(:mod:`litefs_route._wakeups`). Without the stream, one thread per database
per process polls ``<db>-pos`` every millisecond *only while someone waits*.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Sequence

from ._mount import read_position
from ._wakeups import Wakeups

__all__ = ["TXID_COOKIE", "PositionWatcher", "Positions", "TxidCookies", "is_valid_database_name"]

logger = logging.getLogger("litefs_route")

TXID_COOKIE = "__txid"
# A database's name in the mount, as it may appear in a cookie name (RFC 6265 token characters).
_DATABASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Exactly 16 hex digits, any case: what LiteFS's proxy accepts (ltx.ParseTXID:
# the length checked, then strconv.ParseUint(s, 16, 64)). Anything else is ignored.
_COOKIE = r"(?:^|[;,])\s*({}(?:_[A-Za-z0-9._-]{{1,128}})?)=([0-9a-fA-F]{{16}})\s*(?=[;,]|$)"
_COOKIE_HEADER_LIMIT = 16384
_CLEARED = "=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
# Seconds without waiters after which the watcher thread ends.
_IDLE_EXIT = 5.0


def is_valid_database_name(name: str) -> bool:
    """True if *name* may name a read-your-writes database (a plain file name that fits in a cookie name)."""
    return _DATABASE_NAME.fullmatch(name) is not None


class TxidCookies:
    """The TXID cookies of the read-your-writes databases, in the order the ``database`` option gives them.

    The first database's cookie is ``__txid``, the name LiteFS's proxy uses,
    so the two interoperate; each other database's is ``__txid_<name>``
    (``__txid_cache.db``). A value is the database's TXID as 16 hex digits.
    Another source names its cookies from its own *base* (Postgres: ``__lsn``,
    a WAL position as 16 hex digits).
    """

    __slots__ = ("_cookie", "_index", "attributes", "names")

    def __init__(
        self, databases: Sequence[str], *, max_age: int = 300, secure: bool = False, base: str = TXID_COOKIE
    ) -> None:
        if not is_valid_database_name(base.lstrip("_")):
            raise ValueError(f"a cookie base must be a cookie name, got {base!r}")
        for database in databases:
            if not is_valid_database_name(database):
                raise ValueError(f"a database must be a plain file name in the mount, got {database!r}")
        if not databases or len(set(databases)) != len(databases):
            raise ValueError(f"databases must be one or more distinct names, got {list(databases)!r}")
        #: The cookie name of each database.
        self.names = tuple(base if i == 0 else f"{base}_{db}" for i, db in enumerate(databases))
        self._cookie = re.compile(_COOKIE.format(re.escape(base)))
        #: What follows ``name=value; `` in a ``Set-Cookie``: as LiteFS's proxy sets them.
        self.attributes = f"Path=/; Max-Age={int(max_age)}; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")
        self._index = {name: i for i, name in enumerate(self.names)}

    def parse(self, cookie_header: str | None) -> tuple[int, ...] | None:
        """Each database's TXID in a ``Cookie`` header (0: none), or None if none is there.

        Malformed, zero and unknown cookies are ignored, and so is a header
        over 16 KB. A repeated cookie counts as its largest value: waiting
        for the newest write is the consistent choice, and the wait is bounded.
        """
        if not cookie_header or len(cookie_header) > _COOKIE_HEADER_LIMIT:
            return None
        found = [0] * len(self.names)
        for name, value in self._cookie.findall(cookie_header):
            index = self._index.get(name)
            if index is not None:
                found[index] = max(found[index], int(value, 16))
        return tuple(found) if any(found) else None

    def headers(self, fresh: Sequence[int | None], clear: Sequence[int]) -> list[tuple[str, str]]:
        """``Set-Cookie`` headers: database *i* gets ``fresh[i]`` if it is a TXID, is cleared if in *clear*."""
        headers = []
        for index, name in enumerate(self.names):
            txid = fresh[index] if index < len(fresh) else None
            if txid:
                headers.append(("Set-Cookie", f"{name}={txid:016x}; {self.attributes}"))
            elif index in clear:
                headers.append(("Set-Cookie", name + _CLEARED))
        return headers


class PositionWatcher:
    """Shared, lazily started watcher of one database's ``<db>-pos``.

    Waiters share one poller thread, which runs only while someone waits and
    LiteFS's event stream does not push. Another source's position is
    watched the same way by a subclass that overrides :meth:`fetch`.
    """

    def __init__(self, litefs_dir: str, database: str, *, poll_interval: float = 0.001) -> None:
        self.litefs_dir = litefs_dir
        self.database = database
        self.poll_interval = poll_interval
        #: The highest TXID seen so far (None before the first read).
        self.last_known: int | None = None
        #: Reads of ``<db>-pos``; the benchmarks report it.
        self.reads = 0
        self._known_lock = threading.Lock()
        self._version = 0  # advances so far: a read started before one must not overwrite it
        self._wakeups = Wakeups()
        self._cond = threading.Condition()  # the poller's
        self._thread: threading.Thread | None = None
        self._pid = 0
        #: Watcher threads started so far (one at a time, at most).
        self.threads_started = 0
        #: True while LiteFS's event stream delivers this database's TXIDs (no polling).
        self.pushed = False

    @property
    def waiting(self) -> int:
        """How many requests wait right now."""
        return len(self._wakeups)

    def read(self) -> int | None:
        """Read the TXID now (blocking); None if absent, garbled or unreadable."""
        version = self._version
        txid = self.fetch()
        self.reads += 1
        if txid is None:
            return None
        with self._known_lock:
            # An advance that landed while this read was in flight is newer
            # than what was read: keep it (TXIDs can go backwards after a
            # failover, so the larger one is not necessarily the newer).
            if self._version == version:
                self.last_known = txid
        return txid

    def fetch(self) -> int | None:
        """The position, read now from its source (blocking; None if absent, garbled or unreadable)."""
        try:
            position = read_position(self.litefs_dir, self.database)
        except OSError:
            return None
        return None if position is None else position.txid

    def reached(self, txid: int) -> bool:
        """True if the TXID is known to have reached *txid* (no I/O)."""
        last = self.last_known
        return last is not None and last >= txid

    def wait(self, txid: int, timeout: float) -> bool:
        """Block until the TXID reaches *txid*; False on timeout."""
        return self._wakeups.wait(lambda: self.reached(txid), timeout, waiting=self._poll_unless_pushed)

    async def wait_async(self, txid: int, timeout: float) -> bool:
        """:meth:`wait` for an event loop: the loop never blocks."""
        return await self._wakeups.wait_async(lambda: self.reached(txid), timeout, waiting=self._poll_unless_pushed)

    # -- the event stream -------------------------------------------------

    def advance(self, txid: int) -> None:
        """The TXID is now *txid* (a ``tx`` event, or a read): wake whoever it satisfies."""
        with self._known_lock:
            self.last_known = txid
            self._version += 1
        self._wakeups.notify()

    def stream_up(self) -> None:
        """The event stream delivers this database's TXIDs from now on: stop polling."""
        with self._cond:
            self.pushed = True
            self._cond.notify()

    def stream_down(self) -> None:
        """The event stream stopped: poll again for whoever waits."""
        with self._cond:
            self.pushed = False
        self._poll_unless_pushed()

    def forked(self) -> None:
        """In a forked child: fresh locks, no waiters (their threads did not survive), polling again."""
        self._wakeups.forked()
        self._known_lock, self._cond = threading.Lock(), threading.Condition()
        self._thread, self.pushed = None, False

    # -- polling, while the stream is not followed -------------------------

    def _poll_unless_pushed(self) -> None:
        # Called once a waiter is registered: after that, the poller cannot
        # miss it (it checks for waiters under the same lock before it exits).
        with self._cond:
            if self.pushed or not self._wakeups:
                return
            # A forked worker (gunicorn --preload) does not inherit the thread.
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="litefs-route position watcher", daemon=True)
                self._thread.start()
                self.threads_started += 1
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._wakeups and not self.pushed:
                    self._cond.wait(_IDLE_EXIT)
                if not self._wakeups or self.pushed:
                    # Idle, or the stream wakes the waiters: exit; a waiter
                    # (or the stream dropping) starts a new thread.
                    self._thread = None
                    return
            if self.read() is not None:
                self._wakeups.notify()
            with self._cond:
                if self._wakeups:
                    self._cond.wait(self.poll_interval)


class Positions:
    """The read-your-writes databases, in option order: one :class:`PositionWatcher` each."""

    __slots__ = ("watchers",)

    def __init__(self, watchers: Sequence[PositionWatcher]) -> None:
        self.watchers = tuple(watchers)

    @classmethod
    def in_mount(cls, litefs_dir: str, databases: Sequence[str]) -> Positions:
        """The ``<db>-pos`` watchers of *databases* in a LiteFS mount."""
        return cls([PositionWatcher(litefs_dir, database) for database in databases])

    def known(self) -> tuple[int | None, ...]:
        """Each database's highest TXID seen so far (no I/O)."""
        return tuple(watcher.last_known for watcher in self.watchers)

    def read(self) -> tuple[int | None, ...]:
        """Each database's TXID, read now (blocking)."""
        return tuple(watcher.read() for watcher in self.watchers)

    def wait(self, txids: Sequence[int], timeout: float) -> bool:
        """Block until each database reaches its TXID in *txids* (0: no wait), within *timeout* in all."""
        deadline = time.monotonic() + timeout
        for watcher, txid in zip(self.watchers, txids, strict=True):
            if txid and not watcher.wait(txid, max(0.0, deadline - time.monotonic())):
                return False
        return True

    async def wait_async(self, txids: Sequence[int], timeout: float) -> bool:
        """:meth:`wait` for an event loop."""
        deadline = time.monotonic() + timeout
        for watcher, txid in zip(self.watchers, txids, strict=True):
            if txid and not await watcher.wait_async(txid, max(0.0, deadline - time.monotonic())):
                return False
        return True

    @property
    def reads(self) -> int:
        """Reads of ``<db>-pos`` so far, all databases; the benchmarks report it."""
        return sum(watcher.reads for watcher in self.watchers)

    @property
    def waiting(self) -> int:
        """Requests waiting right now, counted once per database they wait for."""
        return sum(watcher.waiting for watcher in self.watchers)
