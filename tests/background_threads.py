"""Runs each of the library's background threads through its paths and prints, as JSON, every import they made.

``python -m tests.background_threads <replica mount> <replica API> <primary database> <primary API>``:
a replica "node2" of a real LiteFS cluster whose primary is "node1". A
thread that imports a module can be forked mid-import (``gunicorn
--preload`` forks while the master's threads run): the child then holds a
half-initialised module for good. So the list printed must be empty. Only
the standard library and litefs_route are imported here, as in the leanest
app process, so that no import is hidden by a module already loaded.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import logging
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType

imports: list[str] = []


class _Spy(importlib.abc.MetaPathFinder):
    """Notes every module a thread other than the main one imports (finders run only for modules not loaded yet)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if threading.current_thread() is not threading.main_thread():
            imports.append(f"{threading.current_thread().name}: {fullname}")
        return None


sys.meta_path.insert(0, _Spy())

from litefs_route._consistency import PositionWatcher  # noqa: E402
from litefs_route._mount import NodeState, read_position  # noqa: E402
from litefs_route._ops.registry import Heartbeat, instances  # noqa: E402
from litefs_route._state_cache import StateCache  # noqa: E402
from litefs_route._subscriber import EventSubscriber  # noqa: E402


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


class _FailingOnceCache(StateCache):
    """Its first push raises, as a bug would: the thread logs the traceback and retries."""

    failed = False

    def push(self, state: NodeState) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug")
        super().push(state)


class _Seen(logging.Handler):
    """Every message logged, so the script waits for what the threads say they did."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))

    def said(self, text: str) -> bool:
        return any(text in message for message in list(self.messages))


def _commit(db_path: str) -> int:
    db = sqlite3.connect(db_path)
    with db:
        db.execute("CREATE TABLE IF NOT EXISTS background (v)")
        db.execute("INSERT INTO background VALUES (1)")
    db.close()
    position = read_position(db_path.rsplit("/", 1)[0], db_path.rsplit("/", 1)[1])
    assert position is not None
    return position.txid


def main(mount: str, api_url: str, primary_db: str, primary_api_url: str) -> None:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)  # every log call formats its record
    seen = _Seen()
    logging.getLogger("litefs_route").addHandler(seen)
    database = primary_db.rsplit("/", 1)[1]
    api_port = int(api_url.rsplit(":", 1)[1])
    connections = 0  # to the replica's API, by the stream's thread

    def audit(event: str, args: tuple[object, ...]) -> None:
        nonlocal connections
        if event == "socket.connect" and threading.current_thread().name == "litefs-route event stream":
            address = args[1]
            if isinstance(address, tuple) and address[1:2] == (api_port,):
                connections += 1

    sys.addaudithook(audit)

    # The event stream: an error in the thread (traceback logged), init, tx events and their spot checks,
    # quiet checks (/info and /metrics over http.client), then a drop and a reconnection.
    subscriber = EventSubscriber(api_url, mount, quiet_after=0.05)
    cache = _FailingOnceCache(mount, "node2", 3600.0)
    watcher = PositionWatcher(mount, database)
    subscriber.attach(cache, [watcher])
    cache.get()  # starts the thread
    _until(lambda: subscriber.up, "the stream")
    streams = connections
    assert seen.said("the LiteFS event stream's thread failed")
    for _ in range(3):
        target = _commit(primary_db)
        _until(lambda: watcher.reached(target), "a tx event")  # noqa: B023 (used at once)
    # Each quiet check asks /info and /metrics over http.client: a connection each.
    _until(lambda: connections >= streams + 4, "two quiet checks")

    # Reading -pos while nobody follows the stream: the position watcher's own thread.
    polled = PositionWatcher(mount, database)
    target = _commit(primary_db)
    assert polled.wait(target, 30)

    # A stream that is not this mount's LiteFS (refused, WARNING), and an API that refuses connections (INFO).
    mismatched = EventSubscriber(primary_api_url, mount)
    other = StateCache(mount, "node2", 3600.0)
    mismatched.attach(other)
    other.get()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    unreachable = EventSubscriber(f"http://127.0.0.1:{closed.getsockname()[1]}", mount)
    nowhere = StateCache(mount, "node2", 3600.0)
    unreachable.attach(nowhere)
    nowhere.get()

    # The release heartbeat on a replica: each renewal takes LiteFS's HALT lock in a thread of its own.
    heartbeat = Heartbeat(f"{mount}/{database}", release="v1", instance_id="node2", every=0.05)
    first = heartbeat.start()
    _until(
        lambda: any(r.instance == "node2" and r.seen_at > first.seen_at for r in instances(f"{mount}/{database}")),
        "a renewal",
    )
    heartbeat.stop()
    _until(lambda: seen.said("not following LiteFS's event stream"), "the mismatch to be logged")
    _until(lambda: seen.said("is not reachable"), "the unreachable API to be logged")
    json.dump(imports, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:5])
