"""Writing from a replica under LiteFS's HALT lock.

LiteFS has a single writer. For a small, infrequent write that must run on a
replica (a one-off data fix from ``fly ssh console``), take the HALT lock::

    from litefs_route import halt_lock

    with halt_lock("/litefs/app.db"):
        with sqlite3.connect("/litefs/app.db") as db:
            db.execute("UPDATE flags SET enabled = 1 WHERE name = 'beta'")

While it is held, the primary stops accepting writes and this node may write;
its transactions are sent back to the primary. It is slow (two round trips to
the primary) and the primary drops a halt after 30 s, so keep the block short.
On the primary, and with no LiteFS mount (local development), it does nothing.
``async with halt_lock_async(...)`` does the same without blocking the loop.

This is the lock ``litefs run -with-halt-lock-on`` takes: a blocking
``fcntl`` write lock on byte 72, length 1, of ``<db>-lock`` opened read-write
(``F_OFD_SETLKW`` where the platform has open-file-description locks, else
``F_SETLKW``). LiteFS answers ENOSYS to the non-blocking forms, so even the
unlock uses the blocking command. Closing the file releases the lock too.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress

from .._log_fields import log_fields
from .._mount import Role, default_instance_id, read_node_state

__all__ = ["DEFAULT_HALT_TIMEOUT", "HALT_BYTE", "HaltLockError", "halt_lock", "halt_lock_async"]

logger = logging.getLogger("litefs_route")

#: The byte of ``<db>-lock`` LiteFS reserves for the HALT lock.
HALT_BYTE = 72
#: Seconds :func:`halt_lock` waits by default: LiteFS itself may take up to
#: 10 s to grant the lock, so its own answer normally arrives first.
DEFAULT_HALT_TIMEOUT = 15.0


class HaltLockError(Exception):
    """The HALT lock could not be taken: no primary known, timeout, or no lock file."""


# Linux has open-file-description locks (owned by the open file, not the
# process, so threads and forks cannot release each other's lock). Python's
# fcntl.lockf() only issues the classic commands, so the OFD form packs a
# struct flock by hand; its layout below is Linux's.
_OFD_SETLKW: int | None = getattr(fcntl, "F_OFD_SETLKW", None) if sys.platform.startswith("linux") else None


def _ofd_flock(lock_type: int) -> bytes:
    # struct flock { short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid; }
    # (off_t is 64-bit: CPython is built with large-file support). Padded past
    # sizeof(struct flock) so the kernel never reads beyond the buffer.
    packed = struct.pack("@hhqqi", lock_type, os.SEEK_SET, HALT_BYTE, 1, 0)
    return packed.ljust(64, b"\0")


def _set_halt(fd: int, lock_type: int) -> None:
    """Blocking lock (F_WRLCK) or unlock (F_UNLCK) of byte 72, length 1."""
    if _OFD_SETLKW is not None:
        fcntl.fcntl(fd, _OFD_SETLKW, _ofd_flock(lock_type))
    else:
        # lockf() without LOCK_NB issues F_SETLKW.
        fcntl.lockf(fd, fcntl.LOCK_UN if lock_type == fcntl.F_UNLCK else fcntl.LOCK_EX, 1, HALT_BYTE, os.SEEK_SET)


class _Acquisition:
    """One blocking lock request, run in its own thread so the caller can stop waiting.

    A blocking ``fcntl`` cannot be timed out or cancelled from Python (only a
    signal interrupts it, and signal handlers belong to the application). So
    the request runs in a daemon thread. If the caller gives up first, the
    request is *abandoned*: the thread owns the descriptor from then on, and
    when LiteFS finally answers (it grants or refuses within about 10 s) the
    thread closes it, which releases the lock if it was granted. No lock ever
    outlives the caller's interest by more than that answer's delay.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.error: OSError | None = None
        self._mutex = threading.Lock()
        self._state = "pending"  # -> "done" | "abandoned"
        self._done = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    def start(self) -> None:
        threading.Thread(target=self._run, name="litefs-route-halt", daemon=True).start()

    def _run(self) -> None:
        try:
            _set_halt(self.fd, fcntl.F_WRLCK)
        except OSError as exc:
            self.error = exc
        with self._mutex:
            abandoned = self._state == "abandoned"
            self._state = "done"
        if abandoned:
            logger.info(
                "HALT lock request answered after its caller gave up; releasing it",
                extra=log_fields(event="halt_lock_abandoned"),
            )
            os.close(self.fd)
            return
        self._done.set()
        for callback in self._callbacks:
            callback()

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call *callback* from the worker thread when the request ends (before start())."""
        self._callbacks.append(callback)

    def wait(self, timeout: float | None) -> bool:
        return self._done.wait(timeout)

    def abandon(self) -> bool:
        """Give up; False if the request already ended (the caller owns the result)."""
        with self._mutex:
            if self._state == "done":
                return False
            self._state = "abandoned"
            return True


def _open_lock_file(db_path: str) -> int:
    lock_path = f"{db_path}-lock"
    try:
        return os.open(lock_path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise HaltLockError(
            f"{lock_path} does not exist: {db_path} is not a database in a LiteFS mount "
            "(or LiteFS has not created it yet)"
        ) from None
    except OSError as exc:
        raise HaltLockError(f"cannot open {lock_path}: {exc.strerror}") from exc


def _needs_halt(db_path: str, instance_id: str | None) -> bool:
    """True on a replica; False on the primary or with no LiteFS at all; raises with no primary."""
    mount = os.path.dirname(os.path.abspath(db_path))
    state = read_node_state(mount, instance_id or default_instance_id())
    if not state.litefs_seen and state.mount_error in (None, "ENOENT"):
        # A plain folder or none (local development): no LiteFS, nothing to lock.
        logger.debug(
            "HALT lock for %s not needed: no LiteFS mount (%s)",
            db_path,
            state.detail,
            extra=log_fields(event="halt_lock_not_needed", database=db_path, reason=state.detail),
        )
        return False
    if state.is_primary:
        logger.debug(
            "HALT lock for %s not needed: %s (%s)",
            db_path,
            state.role.value,
            state.detail,
            extra=log_fields(
                event="halt_lock_not_needed", database=db_path, role=state.role.value, reason=state.detail
            ),
        )
        return False
    if state.role is Role.NO_PRIMARY:
        raise HaltLockError(f"no primary known for {mount} ({state.detail}): nobody can accept the write")
    return True


def _acquired_or_raise(acq: _Acquisition, db_path: str, timeout: float) -> int:
    """After the wait: the locked fd, or an exception (the fd is closed or handed off)."""
    if acq.abandon():
        raise HaltLockError(
            f"timed out after {timeout:g} s waiting for the HALT lock on {db_path}; "
            "the pending request is released as soon as LiteFS answers it"
        )
    if acq.error is not None:
        os.close(acq.fd)
        raise HaltLockError(f"LiteFS refused the HALT lock on {db_path}: {acq.error.strerror}") from acq.error
    return acq.fd


def _release(fd: int, db_path: str) -> None:
    try:
        _set_halt(fd, fcntl.F_UNLCK)
    except OSError as exc:
        # Closing releases it anyway; the unlock only makes it prompt.
        logger.warning(
            "HALT unlock of %s failed (%s); closing the file releases it",
            db_path,
            exc,
            extra=log_fields(event="halt_unlock_failed", database=db_path, reason=str(exc)),
        )
    finally:
        os.close(fd)
    logger.info("HALT lock on %s released", db_path, extra=log_fields(event="halt_lock_released", database=db_path))


@contextmanager
def halt_lock(
    db_path: str | os.PathLike[str], *, timeout: float = DEFAULT_HALT_TIMEOUT, instance_id: str | None = None
) -> Iterator[bool]:
    """Hold LiteFS's HALT lock on *db_path* for the ``with`` block.

    Yields True if the lock was taken (a replica), False if it was not needed
    (the primary, or no LiteFS mount: the database's directory is read with
    :func:`~litefs_route._mount.read_node_state`). Released when the block
    ends, normally or by an exception: unlock, then close.

    *timeout* bounds the wait for LiteFS to grant the lock. On timeout the
    blocking request cannot be withdrawn; it is abandoned to its thread, which
    releases the lock the moment LiteFS answers (see :class:`_Acquisition`).

    Raises :class:`HaltLockError` when no primary is known, when ``<db>-lock``
    does not exist (not a LiteFS database), on timeout, or if LiteFS refuses.
    """
    path = os.fspath(db_path)
    if not _needs_halt(path, instance_id):
        yield False
        return
    acq = _Acquisition(_open_lock_file(path))
    acq.start()
    try:
        acq.wait(timeout)
    except BaseException:  # KeyboardInterrupt while waiting: give the request up, or the lock back
        if not acq.abandon():
            _release(acq.fd, path)
        raise
    fd = _acquired_or_raise(acq, path, timeout)
    logger.info("HALT lock on %s taken", path, extra=log_fields(event="halt_lock_taken", database=path))
    try:
        yield True
    finally:
        _release(fd, path)


@asynccontextmanager
async def halt_lock_async(
    db_path: str | os.PathLike[str], *, timeout: float = DEFAULT_HALT_TIMEOUT, instance_id: str | None = None
) -> AsyncIterator[bool]:
    """:func:`halt_lock` for ``async with``: every FUSE call runs off the event loop.

    Cancelling the task while it waits abandons the request like a timeout.
    """
    path = os.fspath(db_path)
    if not await asyncio.to_thread(_needs_halt, path, instance_id):
        yield False
        return
    fd0 = await asyncio.to_thread(_open_lock_file, path)
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not finished.done():
            finished.set_result(None)

    def notify() -> None:
        with suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(wake)

    acq = _Acquisition(fd0)
    acq.add_done_callback(notify)
    acq.start()
    try:
        await asyncio.wait_for(asyncio.shield(finished), timeout)
    except asyncio.TimeoutError:
        pass  # _acquired_or_raise decides: it may have been granted meanwhile
    except asyncio.CancelledError:
        if not acq.abandon():  # granted as we were cancelled: give it back
            if acq.error is None:
                await asyncio.shield(asyncio.to_thread(_release, acq.fd, path))
            else:
                os.close(acq.fd)
        raise
    fd = _acquired_or_raise(acq, path, timeout)
    logger.info("HALT lock on %s taken", path, extra=log_fields(event="halt_lock_taken", database=path))
    try:
        yield True
    finally:
        await asyncio.to_thread(_release, fd, path)
