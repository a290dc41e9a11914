"""Read-your-writes: the TXID cookie and the one watcher that wakes waiting reads.

The failure it prevents (LiteFS issue #301): a form POST is replayed to the
primary, which redirects to a GET; the GET lands on a replica that has not
received the write yet, and the user does not see their own change.

- On the primary, a request routed as a write gets ``Set-Cookie: __txid=<16
  hex>`` with the database's TXID read from ``<db>-pos`` *after* the handler
  ran: LiteFS's proxy format, so the two interoperate.
- On a replica, a read carrying a cookie ahead of the local TXID waits for
  replication to catch up, then runs; if the wait times out the read is
  replayed to the primary, which has the data.
- The primary never waits. A cookie ahead of the primary's own TXID (TXIDs go
  backwards after a failover that lost writes) is ignored and cleared.

Waiting costs no polling while LiteFS's event stream is up: its ``tx``
events (:mod:`litefs_route.subscriber`) advance the :class:`PositionWatcher`,
which wakes every waiter whose TXID has been reached, sync waiters through
an Event and asyncio waiters through their loop. Without the stream, one
thread per process polls ``<db>-pos`` every millisecond *only while someone
waits*.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .mount import read_position

__all__ = ["TXID_COOKIE", "PositionWatcher", "parse_txid_cookie"]

logger = logging.getLogger("litefs_route")

TXID_COOKIE = "__txid"
# LiteFS writes %016x; accept what it writes and nothing longer. Zero is "no write".
# Exactly 16 hex digits, any case: what LiteFS's proxy accepts (ltx.ParseTXID:
# the length checked, then strconv.ParseUint(s, 16, 64)). Anything else is ignored.
_COOKIE = re.compile(r"(?:^|[;,])\s*__txid=([0-9a-fA-F]{16})\s*(?=[;,]|$)")
_COOKIE_HEADER_LIMIT = 16384
# Seconds without waiters after which the watcher thread ends.
_IDLE_EXIT = 5.0


def parse_txid_cookie(cookie_header: str | None) -> int | None:
    """The TXID in a ``Cookie`` header, or None if absent, zero or malformed.

    A repeated cookie counts as its largest valid value: waiting for the
    newest write is the consistent choice, and the wait is bounded anyway.
    """
    if not cookie_header or len(cookie_header) > _COOKIE_HEADER_LIMIT:
        return None
    values = [int(v, 16) for v in _COOKIE.findall(cookie_header)]
    txid = max(values, default=0)
    return txid or None


@dataclass(slots=True, eq=False)
class _Waiter:
    txid: int
    wake: Callable[[], None]


class PositionWatcher:
    """Shared, lazily started watcher of one database's ``<db>-pos``."""

    def __init__(self, litefs_dir: str, database: str, *, poll_interval: float = 0.001) -> None:
        self.litefs_dir = litefs_dir
        self.database = database
        self.poll_interval = poll_interval
        #: The highest TXID seen so far (None before the first read).
        self.last_known: int | None = None
        #: Reads of ``<db>-pos``; the benchmarks report it.
        self.reads = 0
        self._cond = threading.Condition()
        self._waiters: list[_Waiter] = []
        self._thread: threading.Thread | None = None
        self._pid = 0
        #: Watcher threads started so far (one at a time, at most).
        self.threads_started = 0
        #: True while LiteFS's event stream delivers this database's TXIDs (no polling).
        self.pushed = False

    @property
    def waiting(self) -> int:
        """How many requests wait right now."""
        return len(self._waiters)

    def read(self) -> int | None:
        """Read the TXID now (blocking); None if absent, garbled or unreadable."""
        try:
            position = read_position(self.litefs_dir, self.database)
        except OSError:
            position = None
        self.reads += 1
        if position is None:
            return None
        self.last_known = position.txid
        return position.txid

    def reached(self, txid: int) -> bool:
        """True if the TXID is known to have reached *txid* (no I/O)."""
        last = self.last_known
        return last is not None and last >= txid

    # -- the event stream -------------------------------------------------

    def advance(self, txid: int) -> None:
        """The TXID is now *txid* (a ``tx`` event, or a read): wake whoever it satisfies."""
        self.last_known = txid
        self._wake_reached(txid)

    def stream_up(self) -> None:
        """The event stream delivers this database's TXIDs from now on: stop polling."""
        with self._cond:
            self.pushed = True
            self._cond.notify()

    def stream_down(self) -> None:
        """The event stream stopped: poll again for whoever waits."""
        with self._cond:
            self.pushed = False
            if self._waiters:
                self._ensure_thread()
                self._cond.notify()

    def forked(self) -> None:
        """In a forked child: a fresh lock, no waiters (their threads did not survive), polling again."""
        self._cond = threading.Condition()
        self._waiters, self._thread, self.pushed = [], None, False

    # -- waiting ----------------------------------------------------------

    def _register(self, txid: int, wake: Callable[[], None]) -> _Waiter | None:
        """Add a waiter; None if *txid* is already reached (checked under the lock an advance takes)."""
        with self._cond:
            if self.reached(txid):
                return None
            waiter = _Waiter(txid, wake)
            self._waiters.append(waiter)
            if not self.pushed:
                self._ensure_thread()
                self._cond.notify()
        return waiter

    def _wake_reached(self, txid: int) -> None:
        with self._cond:
            ready = [w for w in self._waiters if w.txid <= txid]
            if ready:
                self._waiters = [w for w in self._waiters if w.txid > txid]
        for waiter in ready:
            waiter.wake()

    def _unregister(self, waiter: _Waiter) -> None:
        with self._cond, contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _ensure_thread(self) -> None:
        # A forked worker (gunicorn --preload) does not inherit the thread.
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="litefs-route position watcher", daemon=True)
            self._thread.start()
            self.threads_started += 1

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._waiters and not self.pushed:
                    self._cond.wait(_IDLE_EXIT)
                if not self._waiters or self.pushed:
                    # Idle, or the stream wakes the waiters: exit; a waiter
                    # (or the stream dropping) starts a new thread.
                    self._thread = None
                    return
            txid = self.read()
            if txid is not None:
                self._wake_reached(txid)
            with self._cond:
                if self._waiters:
                    self._cond.wait(self.poll_interval)

    def wait(self, txid: int, timeout: float) -> bool:
        """Block until the TXID reaches *txid*; False on timeout."""
        event = threading.Event()
        waiter = self._register(txid, event.set)
        if waiter is not None and not event.wait(timeout):
            self._unregister(waiter)
        return self.reached(txid)

    async def wait_async(self, txid: int, timeout: float) -> bool:
        """:meth:`wait` for an event loop: the loop never blocks."""
        if self.reached(txid):
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): wait in a worker thread
            import anyio.to_thread

            return await anyio.to_thread.run_sync(self.wait, txid, timeout)
        future: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not future.done():
                future.set_result(None)

        def wake() -> None:
            loop.call_soon_threadsafe(resolve)

        waiter = self._register(txid, wake)
        if waiter is None:
            return True
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            self._unregister(waiter)
        return self.reached(txid)
