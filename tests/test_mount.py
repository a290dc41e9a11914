"""Reading the mount: every state LiteFS can show, and garbage it should not."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from litefs_route._mount import NodeState, Position, Role, parse_lag, parse_position, parse_primary, read_node_state
from litefs_route._state_cache import ESTABLISHED_AFTER, StateCache
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


def test_only_a_directory_that_does_not_exist_is_a_missing_mount(tmp_path: Path) -> None:
    """A typo in LITEFS_DIR is told from a mount point LiteFS has not filled yet (it may be starting)."""
    missing = read_node_state(str(tmp_path / "a" / "b"), ME)
    assert (missing.role, missing.mount_missing, missing.mount_error) == (Role.NO_PRIMARY, True, "ENOENT")
    assert missing.detail == f"the LiteFS directory {tmp_path / 'a' / 'b'} does not exist"
    (tmp_path / "empty").mkdir()  # a mount point before LiteFS mounts it, or after it stopped
    (tmp_path / "file").write_bytes(b"")
    Mount(tmp_path / "starting").set_lag(1500)  # LiteFS up, no .primary yet
    for name in ("empty", "file", "starting"):
        state = read_node_state(str(tmp_path / name), ME)
        assert (state.role, state.mount_missing) == (Role.NO_PRIMARY, False), name


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
    assert cache.get().role is Role.NO_PRIMARY  # a primary newly named is not a replay target yet
    assert cache.reads == 2
    now[0] += ESTABLISHED_AFTER + 0.025
    assert cache.get(max_age=0).role is Role.REPLICA  # forced fresh read: named without a break since
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
    mount.make_no_primary()
    now[0] += 2.0
    assert cache.cached() is None  # claimed by this caller
    for _ in range(64):
        stale = cache.cached()
        assert stale is not None
        assert stale.role is Role.PRIMARY  # everyone else: the previous reading, no read
    assert cache.reads == 1
    assert cache.refresh().role is Role.NO_PRIMARY
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


# -- an established primary ------------------------------------------------------------------------
# Each step: (seconds from the start, what LiteFS says, how the cache hears it, what routing gets).
# "X": the mount or a push names X (lag 12 ms); "X?": names X with a .lag over a second (a flicker's);
# "-": no primary named; "me": this node holds the lease. Heard by "read" (the mount) or "push" (the stream).
ESTABLISHMENT = [
    pytest.param([(0.0, "X", "read", "X")], id="first-reading-with-a-live-lag-counts-at-once"),
    pytest.param(
        [(0.0, "X?", "read", "-"), (0.0625, "X?", "read", "-"), (0.125, "X?", "read", "X")],
        id="first-reading-with-an-old-lag-waits-for-the-hold",
    ),
    pytest.param(
        [
            (0.0, "me", "read", "me"),
            (1.0, "X", "read", "-"),
            (1.0625, "-", "read", "-"),
            (2.0, "X", "read", "-"),
            (2.0625, "-", "read", "-"),
        ],
        id="a-flicker-every-second-is-never-a-target",
    ),
    pytest.param(
        [
            (0.0, "me", "read", "me"),
            (1.0, "X", "read", "-"),
            (2.0, "X", "read", "-"),
            (2.0625, "X", "read", "-"),
            (2.125, "X", "read", "X"),
        ],
        id="readings-a-second-apart-do-not-show-an-unbroken-name",
    ),
    pytest.param(
        [(0.0, "me", "read", "me"), (1.0, "X", "push", "-"), (1.0625, None, "", "-"), (1.125, None, "", "X")],
        id="a-push-counts-from-when-it-came-and-holds-until-the-next",
    ),
    pytest.param(
        [
            (0.0, "me", "push", "me"),
            (1.0, "X", "push", "-"),
            (1.001, "-", "push", "-"),
            (1.2, None, "", "-"),
            (2.0, "X", "push", "-"),
            (2.2, None, "", "X"),
        ],
        id="a-pushed-flicker-resets-the-hold",
    ),
    pytest.param(
        [(0.0, "X", "read", "X"), (0.5, "Y", "read", "-"), (0.625, "Y", "read", "Y"), (5.0, "Y", "read", "Y")],
        id="a-new-primary-waits-once-then-stays-established",
    ),
]


@pytest.mark.parametrize("steps", ESTABLISHMENT)
def test_a_primary_is_a_target_once_named_without_a_break(
    mount: Mount, steps: list[tuple[float, str | None, str, str]]
) -> None:
    now = [100.0]
    cache = StateCache(str(mount.path), ME, ttl=1.0, clock=lambda: now[0])
    names = {"X": "node-x", "Y": "node-y", "me": ME}
    for at, says, heard, routed in steps:
        now[0] = 100.0 + at
        if says is not None:
            state = {
                "-": NodeState(Role.NO_PRIMARY, ME, None, 1500),
                "me": NodeState(Role.PRIMARY, ME, ME, 0),
                "X?": NodeState(Role.REPLICA, ME, "node-x", 1500),
            }.get(says) or NodeState(Role.REPLICA, ME, names[says], 12)
            if heard == "push":
                cache.push(state)
            else:
                _write_mount(mount, state)
                cache.get(max_age=0)
        got = cache.get(max_age=10.0)
        expected = names.get(routed)
        assert (got.primary_id, got.role is Role.NO_PRIMARY) == (expected, routed == "-"), (at, says, got.detail)


def _write_mount(mount: Mount, state: NodeState) -> None:
    if state.role is Role.PRIMARY:
        mount.make_primary()
    elif state.role is Role.NO_PRIMARY:
        mount.make_no_primary()
    else:
        assert state.primary_id is not None
        assert state.lag_ms is not None
        mount.make_replica(state.primary_id, lag_ms=state.lag_ms)


def test_a_flickering_primary_is_logged_once_per_change(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """Pushed readings as LiteFS sends them after the primary died: one line per change routing takes, by two caches."""
    now = [100.0]
    caches = [StateCache(str(tmp_path), ME, ttl=1.0, clock=lambda: now[0]) for _ in range(2)]
    caplog.set_level(logging.INFO, logger="litefs_route")
    replica = NodeState(Role.REPLICA, ME, OTHER, detail="primaryChange: primary known")
    gone = NodeState(Role.NO_PRIMARY, ME, None, detail="primaryChange: no primary")
    for cache in caches:
        cache.push(replica)
    for _ in range(20):  # the dead primary named again for a moment on each reconnect attempt
        now[0] += 0.2
        for cache in caches:
            cache.push(replica)
        now[0] += 0.001
        for cache in caches:
            cache.push(gone)
            assert cache.get().role is Role.NO_PRIMARY
    elected = NodeState(Role.REPLICA, ME, "node-y", detail="primaryChange: primary known")
    for cache in caches:
        cache.push(elected)
    now[0] += ESTABLISHED_AFTER + 0.01
    assert [cache.get().primary_id for cache in caches] == ["node-y", "node-y"]
    lines = [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records]
    assert lines == [
        ("INFO", "LiteFS role unknown -> replica"),
        ("WARNING", "LiteFS role replica -> no-primary"),
        ("INFO", "LiteFS role no-primary -> replica"),
    ]
