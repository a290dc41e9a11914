"""halt_lock() takes exactly the lock LiteFS expects, on a real file, and always gives it back.

Other processes observe the lock the way LiteFS's FUSE layer would see a
conflicting request: a second process's non-blocking lock attempts, and the
kernel's own table of locks (/proc/locks).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from litefs_route._ops.halt import HALT_BYTE, HaltLockError, halt_lock, halt_lock_async
from tests.support import Mount, wait_until

# Tries non-blocking locks on single bytes of the file from another process
# and reports which were refused: classic POSIX locks (exclusive and shared)
# and, where the platform has them, open-file-description locks.
PROBE = r"""
import errno, fcntl, json, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
out = {}
def attempt(key, fn):
    try:
        fn()
    except OSError as exc:
        assert exc.errno in (errno.EAGAIN, errno.EACCES), exc
        out[key] = "busy"
    else:
        out[key] = "free"
for start in (71, 72, 73):
    attempt(f"ex{start}", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, start))
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, start)
    attempt(f"sh{start}", lambda: fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, start))
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, start)
if hasattr(fcntl, "F_OFD_SETLK"):
    ofd = os.open(sys.argv[1], os.O_RDWR)
    flock = struct.pack("@hhqqi", fcntl.F_WRLCK, 0, 72, 1, 0).ljust(64, b"\0")
    attempt("ofd72", lambda: fcntl.fcntl(ofd, fcntl.F_OFD_SETLK, flock))
print(json.dumps(out))
"""

# Holds a classic blocking write lock on byte 72 until it reads a line.
HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 1, 72)
print("locked", flush=True)
sys.stdin.readline()
"""

ALL_FREE = {"ex71": "free", "sh71": "free", "ex72": "free", "sh72": "free", "ex73": "free", "sh73": "free"}


def probe(lock_file: Path) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(lock_file)], capture_output=True, text=True, check=True, timeout=30
    )
    result: dict[str, str] = json.loads(out.stdout)
    return result


@contextmanager
def held_elsewhere(lock_file: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds byte 72 until the block ends (or it is told to release)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        release_holder(proc)


def release_holder(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    if proc.stdout is not None:
        proc.stdout.close()


def halt_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "litefs-route-halt"]


@pytest.fixture
def replica(mount: Mount) -> Mount:
    mount.make_replica("primary-host")
    (mount.path / "app.db").write_bytes(b"")
    (mount.path / "app.db-lock").write_bytes(b"")
    return mount


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_holds_a_write_lock_on_byte_72_length_1(replica: Mount) -> None:
    lock_file = replica.path / "app.db-lock"
    with halt_lock(replica.path / "app.db") as held:
        assert held is True
        seen = probe(lock_file)
    assert HALT_BYTE == 72
    # Exclusive and shared requests on 72 are refused: a write lock, not a read lock.
    assert seen["ex72"] == seen["sh72"] == "busy"
    assert seen["ofd72"] == "busy"
    # Length 1: the neighbours stay free.
    assert seen["ex71"] == seen["sh71"] == seen["ex73"] == seen["sh73"] == "free"


def test_is_an_open_file_description_lock(replica: Mount) -> None:
    # The kernel's lock table shows the kind of lock, its type and byte range.
    inode = os.stat(replica.path / "app.db-lock").st_ino
    with halt_lock(replica.path / "app.db"):
        rows = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
    ours = [row for row in rows if row[5].endswith(f":{inode}")]
    assert [(row[1], row[3], row[6], row[7]) for row in ours] == [("OFDLCK", "WRITE", "72", "72")]


def test_released_after_the_block_and_after_an_exception(replica: Mount) -> None:
    lock_file = replica.path / "app.db-lock"
    before = open_fds()
    with halt_lock(replica.path / "app.db"):
        pass
    assert probe(lock_file) == {**ALL_FREE, "ofd72": "free"}
    assert open_fds() == before

    def fail_inside() -> None:
        with halt_lock(replica.path / "app.db"):
            assert probe(lock_file)["ex72"] == "busy"
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        fail_inside()
    assert probe(lock_file) == {**ALL_FREE, "ofd72": "free"}
    assert open_fds() == before


def test_blocks_until_the_holder_lets_go(replica: Mount) -> None:
    acquired = threading.Event()
    leave = threading.Event()

    def take() -> None:
        with halt_lock(replica.path / "app.db", timeout=30):
            acquired.set()
            leave.wait(30)

    with held_elsewhere(replica.path / "app.db-lock") as holder:
        thread = threading.Thread(target=take)
        thread.start()
        # A non-blocking request would have failed at once; this one waits.
        assert not acquired.wait(0.3)
        assert thread.is_alive()
        release_holder(holder)
        assert acquired.wait(30)
        assert probe(replica.path / "app.db-lock")["ex72"] == "busy"
        leave.set()
        thread.join(30)
    assert probe(replica.path / "app.db-lock")["ex72"] == "free"


def test_timeout_raises_and_the_abandoned_request_is_released(replica: Mount) -> None:
    lock_file = replica.path / "app.db-lock"
    with held_elsewhere(lock_file) as holder:
        with pytest.raises(HaltLockError, match="timed out"), halt_lock(replica.path / "app.db", timeout=0.1):
            pytest.fail("the block must not run without the lock")
        assert halt_threads(), "the blocking request is still pending in its thread"
        release_holder(holder)
    # The kernel grants the abandoned request once the holder lets go; its
    # thread then closes the file, which releases it.
    wait_until(lambda: not halt_threads(), what="the abandoned request to end")
    assert probe(lock_file) == {**ALL_FREE, "ofd72": "free"}


def test_no_op_on_the_primary_and_standalone(mount: Mount, tmp_path: Path) -> None:
    # No -lock file at all: a lock attempt would fail, so nothing was attempted.
    with halt_lock(mount.path / "app.db") as held:
        assert held is False
    assert not (mount.path / "app.db-lock").exists()
    with halt_lock(tmp_path / "no-mount" / "app.db") as held:
        assert held is False


def test_errors_are_clear(mount: Mount) -> None:
    mount.make_no_primary()
    with pytest.raises(HaltLockError, match="no primary known"), halt_lock(mount.path / "app.db"):
        pytest.fail("must not run")
    mount.make_replica("primary-host")
    with pytest.raises(HaltLockError, match=r"app\.db-lock does not exist"), halt_lock(mount.path / "app.db"):
        pytest.fail("must not run")


def test_async_variant_does_not_block_the_loop(replica: Mount) -> None:
    lock_file = replica.path / "app.db-lock"

    async def scenario(holder: subprocess.Popen[str]) -> tuple[int, int, str]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        async def take() -> str:
            async with halt_lock_async(replica.path / "app.db", timeout=30) as held:
                assert held is True
                return (await asyncio.to_thread(probe, lock_file))["ex72"]

        tick_task = asyncio.create_task(ticker())
        take_task = asyncio.create_task(take())
        # The loop keeps running other tasks while the lock is contended.
        while ticks < 20:
            await asyncio.sleep(0.001)
        assert not take_task.done()
        ticks_while_waiting = ticks
        await asyncio.to_thread(release_holder, holder)
        seen_inside = await take_task
        stop.set()
        await tick_task
        return ticks_while_waiting, ticks, seen_inside

    with held_elsewhere(lock_file) as holder:
        while_waiting, total, inside = asyncio.run(scenario(holder))
    assert while_waiting >= 20
    assert total >= while_waiting
    assert inside == "busy"
    assert probe(lock_file)["ex72"] == "free"


def test_async_timeout_and_cancellation_leave_no_lock(replica: Mount) -> None:
    lock_file = replica.path / "app.db-lock"

    async def timeout() -> None:
        with pytest.raises(HaltLockError, match="timed out"):
            async with halt_lock_async(replica.path / "app.db", timeout=0.1):
                pytest.fail("must not run")

    async def cancel() -> None:
        entered = False

        async def take() -> None:
            nonlocal entered
            async with halt_lock_async(replica.path / "app.db", timeout=30):
                entered = True

        task = asyncio.create_task(take())
        wait_for_thread = asyncio.to_thread(wait_until, lambda: len(halt_threads()) >= 2, 10.0, "request")
        await wait_for_thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not entered

    with held_elsewhere(lock_file) as holder:
        asyncio.run(timeout())
        asyncio.run(cancel())
        assert len(halt_threads()) == 2  # both requests still pending in the kernel
        release_holder(holder)
    wait_until(lambda: not halt_threads(), what="the abandoned requests to end")
    assert probe(lock_file) == {**ALL_FREE, "ofd72": "free"}
