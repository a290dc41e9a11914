"""Waiting for what another thread makes true: threads block, event loops never do.

The event stream's thread (and the ``-pos`` poller) change what requests
wait for: a database's TXID, the node's state. :class:`Wakeups` lets any
number of requests wait for such a change at no cost while nothing changes,
sync requests through a :class:`threading.Event` and asyncio ones through
their loop (``call_soon_threadsafe``); the thread that made a change calls
:meth:`Wakeups.notify`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Wakeups"]

# Seconds between looks at a condition where no thread can wake the loop (trio).
_POLL = 0.002


@dataclass(slots=True, eq=False)
class _Waiter:
    ready: Callable[[], bool]
    wake: Callable[[], None]


class Wakeups:
    """Waiters on conditions another thread makes true.

    A condition (``ready``) is checked under the same lock :meth:`notify`
    takes, so a change made before :meth:`notify` is called is never missed.
    Conditions must be cheap and take no lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []

    def __len__(self) -> int:
        """How many wait right now."""
        return len(self._waiters)

    def notify(self) -> None:
        """Something changed: wake every waiter whose condition now holds."""
        ready: list[_Waiter] = []
        with self._lock:
            if not self._waiters:
                return
            keep: list[_Waiter] = []
            for waiter in self._waiters:
                (ready if waiter.ready() else keep).append(waiter)
            self._waiters = keep
        for waiter in ready:
            waiter.wake()  # never raises (see wait_async): every ready waiter is woken

    def wait(self, ready: Callable[[], bool], timeout: float, *, waiting: Callable[[], None] | None = None) -> bool:
        """Block until *ready()* holds (after a :meth:`notify`), at most *timeout* seconds; returns *ready()*.

        *waiting* is called once the waiter is registered, unless it was ready
        already (the watcher of ``-pos`` starts its poller there).
        """
        event = threading.Event()
        waiter = self._add(ready, event.set)
        if waiter is not None:
            try:
                if waiting is not None:
                    waiting()
                event.wait(timeout)
            finally:
                self._remove(waiter)
        return ready()

    async def wait_async(
        self, ready: Callable[[], bool], timeout: float, *, waiting: Callable[[], None] | None = None
    ) -> bool:
        """:meth:`wait` for an event loop: the loop never blocks."""
        if ready():
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): no thread can wake the loop, so look every few ms
            return await self._poll(ready, timeout, waiting)
        future: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not future.done():
                future.set_result(None)

        def wake() -> None:
            # Called from the notifying thread: the loop may be closed by then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(resolve)

        waiter = self._add(ready, wake)
        if waiter is None:
            return True
        try:
            if waiting is not None:
                waiting()
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            pass
        finally:  # also when cancelled: a waiter nobody awaits must not stay registered
            self._remove(waiter)
        return ready()

    async def _poll(self, ready: Callable[[], bool], timeout: float, waiting: Callable[[], None] | None) -> bool:
        """:meth:`wait_async` on a loop other than asyncio's (trio, through anyio): cancellable, no thread."""
        import anyio

        # Registered all the same: a poller (PositionWatcher's) runs only while someone waits.
        waiter = self._add(ready, _nothing)
        if waiter is None:
            return True
        try:
            if waiting is not None:
                waiting()
            deadline = time.monotonic() + timeout
            while not ready() and time.monotonic() < deadline:
                await anyio.sleep(_POLL)
        finally:
            self._remove(waiter)
        return ready()

    def forked(self) -> None:
        """In a forked child: a fresh lock, and no waiters (their threads did not survive the fork)."""
        self._lock, self._waiters = threading.Lock(), []

    def _add(self, ready: Callable[[], bool], wake: Callable[[], None]) -> _Waiter | None:
        with self._lock:
            if ready():
                return None
            waiter = _Waiter(ready, wake)
            self._waiters.append(waiter)
        return waiter

    def _remove(self, waiter: _Waiter) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._waiters.remove(waiter)


def _nothing() -> None:
    """The wake-up of a waiter that looks for itself."""
