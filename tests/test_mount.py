"""Reading the mount: every state LiteFS can show, and garbage it should not."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from litefs_route.mount import NodeState, Position, Role, parse_lag, parse_position, parse_primary, read_node_state
from litefs_route.state_cache import StateCache
from tests.support import Mount

ME = "e784079b449483"
OTHER = "3d8d9e5b711e68"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"3d8d9e5b711e68\n", OTHER),
        (b"3d8d9e5b711e68", OTHER),
        (b"host.example.internal\n", "host.example.internal"),
        (b"\n", None),  # static lease without a hostname: never a target
        (b"", None),
        (b"a\nb\n", None),
        (b"a\r\nfly-replay: instance=evil\n", None),
        (b"abc;state=x\n", None),
        (b"abc def\n", None),
        (b"-abc\n", None),
        (b"\xff\xfe\n", None),
        (b"a" * 254 + b"\n", None),
        (b"a" * 253 + b"\n", "a" * 253),
    ],
    ids=[
        "machine-id",
        "no-newline",
        "fqdn",
        "empty-line",
        "empty",
        "two-lines",
        "header-injection",
        "separator",
        "space",
        "leading-dash",
        "binary",
        "too-long",
        "max-length",
    ],
)
def test_parse_primary(data: bytes, expected: str | None) -> None:
    assert parse_primary(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"+000000000", 0),
        (b"+000000042\n", 42),
        (b"+2147483647", 2147483647),
        (b"-000000005", -5),
        (b"", None),
        (b"abc", None),
        (b"+1.5", None),
    ],
    ids=["zero", "newline", "no-primary", "negative", "empty", "text", "float"],
)
def test_parse_lag(data: bytes, expected: int | None) -> None:
    assert parse_lag(data) == expected


def test_parse_position() -> None:
    assert parse_position(b"00000000000000ff/00000000deadbeef\n") == Position(255, 0xDEADBEEF)
    assert parse_position(b"00000000000000ff/00000000deadbeef") == Position(255, 0xDEADBEEF)
    for bad in (b"", b"ff/ee\n", b"00000000000000FF/00000000deadbeef\n", b"00000000000000ff/00000000deadbeef\nx"):
        assert parse_position(bad) is None


def test_states(mount: Mount, tmp_path: Path) -> None:
    d = str(mount.path)
    assert read_node_state(None, ME).role is Role.STANDALONE
    missing = read_node_state(str(tmp_path / "missing"), ME)  # configured, but not there: never standalone
    assert (missing.role, missing.mount_error, missing.litefs_seen) == (Role.NO_PRIMARY, "ENOENT", False)

    mount.make_primary()
    state = read_node_state(d, ME)
    assert (state.role, state.primary_id, state.lag_ms) == (Role.PRIMARY, ME, 0)

    mount.make_replica(OTHER, lag_ms=42)
    state = read_node_state(d, ME)
    assert (state.role, state.primary_id, state.lag_ms) == (Role.REPLICA, OTHER, 42)

    mount.make_replica(ME)  # .primary names this instance: we are the primary
    assert read_node_state(d, ME).role is Role.PRIMARY

    mount.make_no_primary()
    state = read_node_state(d, ME)
    assert (state.role, state.primary_id) == (Role.NO_PRIMARY, None)

    # Neither file: the mount point a stopped LiteFS leaves behind (seen on real LiteFS,
    # tests/test_litefs_routing.py), where a write would go to a stray local file.
    mount.set_lag(None)
    assert read_node_state(d, ME).role is Role.NO_PRIMARY

    mount.set_lag(0)
    (mount.path / ".lag").write_bytes(b"garbage")  # unparsable .lag counts as absent
    assert read_node_state(d, ME).role is Role.NO_PRIMARY

    mount.write_primary_raw(b"evil\r\nx: y\n")
    state = read_node_state(d, ME)
    assert (state.role, state.primary_id) == (Role.NO_PRIMARY, None)
    assert "evil" not in state.detail


def test_unreadable_primary_means_unknown(mount: Mount) -> None:
    # A directory where the file should be: read() fails with EISDIR, a real
    # I/O error from the mount (as EIO or ENOTCONN from a dead FUSE mount).
    (mount.path / ".primary").mkdir()
    state = read_node_state(str(mount.path), ME)
    assert (state.role, state.primary_id) == (Role.NO_PRIMARY, None)
    assert "unreadable" in state.detail
    assert state.mount_error == "EISDIR"
    assert read_node_state(str(mount.path.parent), ME).mount_error is None  # read fine, holds nothing


def test_cache_reads_once_per_ttl_and_logs_changes(mount: Mount, caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    cache = StateCache(str(mount.path), ME, ttl=1.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="litefs_route")
    assert cache.get().role is Role.PRIMARY
    mount.make_replica(OTHER)
    for _ in range(100):
        assert cache.get().role is Role.PRIMARY  # within the TTL: no read
    assert cache.reads == 1
    now[0] += 1.01
    assert cache.get().role is Role.REPLICA
    assert cache.reads == 2
    assert cache.get(max_age=0).role is Role.REPLICA  # forced fresh read
    assert cache.reads == 3
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # one line per change, not per read
    assert "unknown -> primary" in messages[0]
    assert "primary -> replica" in messages[1]
    assert OTHER in messages[1]


def test_cache_refresh_is_single_flight(mount: Mount) -> None:
    """Expired: the first caller claims the refresh; the others keep the old reading.

    This is what stops an ASGI server from starting one thread-hop read per
    request in flight when the TTL runs out.
    """
    now = [100.0]
    cache = StateCache(str(mount.path), ME, ttl=1.0, clock=lambda: now[0])
    assert cache.get().role is Role.PRIMARY
    mount.make_replica(OTHER)
    now[0] += 2.0
    assert cache.cached() is None  # claimed by this caller
    for _ in range(64):
        stale = cache.cached()
        assert stale is not None
        assert stale.role is Role.PRIMARY  # everyone else: the previous reading, no read
    assert cache.reads == 1
    assert cache.refresh().role is Role.REPLICA
    assert cache.reads == 2
    assert cache.cached() is not None
    # an abandoned claim (the claimer was cancelled) expires
    now[0] += 2.0
    assert cache.cached() is None
    assert cache.cached() is not None
    now[0] += 6.0
    assert cache.cached() is None  # taken over


def test_concurrent_refreshes_share_reads(mount: Mount) -> None:
    """A burst of refreshes (a cold start, replayed requests) costs two reads.

    The first caller reads; every caller that was already waiting when a later
    read began takes that read's result instead of reading again.
    """
    reading = threading.Event()
    release = threading.Event()
    asked = threading.Semaphore(0)
    waiters: set[threading.Thread] = set()

    def clock() -> float:
        now = time.monotonic()
        if threading.current_thread() in waiters:
            asked.release()  # a waiter took a time: the first is when it asked
        return now

    def slow_reader(litefs_dir: str | None, instance_id: str) -> NodeState:
        reading.set()
        release.wait(10)
        return read_node_state(litefs_dir, instance_id)

    cache = StateCache(str(mount.path), ME, ttl=1.0, reader=slow_reader, clock=clock)
    first = threading.Thread(target=cache.refresh)
    first.start()
    assert reading.wait(10)  # the first read began (and holds the lock)

    results: list[NodeState] = []
    threads = [threading.Thread(target=lambda: results.append(cache.refresh())) for _ in range(16)]
    waiters.update(threads)
    for thread in threads:
        thread.start()
    for _ in threads:
        assert asked.acquire(timeout=10)  # every waiter asked after the first read began
    release.set()
    first.join(10)
    for thread in threads:
        thread.join(10)
    assert len(results) == 16
    assert all(state.role is Role.PRIMARY for state in results)
    assert cache.reads == 2  # the first, and one for all sixteen


def test_a_role_reads_as_its_value() -> None:
    assert (str(Role.REPLICA), f"{Role.NO_PRIMARY}", f"{Role.PRIMARY:>8}") == ("replica", "no-primary", " primary")
