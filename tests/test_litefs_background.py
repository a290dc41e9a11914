"""``run --while-primary`` on three real LiteFS nodes (Consul lease): handoff and kill -9 (marker ``litefs``).

Each node runs a supervisor of :mod:`tests.supervised_cmd`, which appends
its start, SIGTERM and exit (wall clock) to one shared record. The record is
the ground truth: copies never overlap on a graceful handoff, and after a
kill -9 the dead primary's copy is gone before the new primary's starts; a
copy runs once a primary exists. The timings printed (``-s``) are the
figures in docs/background-work.md.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from litefs_route import Role
from litefs_route._mount import read_node_state
from litefs_route_devcluster.litefs import LiteFSCluster, LiteFSNode, TcpRelay
from litefs_route_devcluster.pytest_plugin import require_litefs
from tests.support import wait_until

if TYPE_CHECKING:
    from litefs_route_devcluster.pytest_plugin import LiteFSClusterFactory

pytestmark = pytest.mark.litefs

GRACE = 2.0
# Under a loaded CI machine (both cores busy), LiteFS's lease moves take seconds.
SETTLE = 60.0


@dataclass
class Copy:
    node: str
    pid: int
    start: float
    term: float | None = None
    exit: float | None = None


@dataclass
class Background:
    cluster: LiteFSCluster
    record: Path
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: More options for the supervisor (bench/background_handoff.py sets --start-delay).
    options: tuple[str, ...] = ()

    def start(self, node: str) -> None:
        argv = [
            sys.executable,
            "-m",
            "litefs_route",
            "run",
            "--while-primary",
            "--dir",
            self.cluster.mount_dir(node),
            "--instance-id",
            node,
            "--api-url",
            self.cluster.nodes[node].api_url,
            "--grace",
            str(GRACE),
            *self.options,
            "--",
            sys.executable,
            "-m",
            "tests.supervised_cmd",
            str(self.record),
            node,
        ]
        with (self.logs / f"{node}.supervisor.log").open("a") as out:
            self.procs[node] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def copies(self) -> list[Copy]:
        found: dict[int, Copy] = {}
        text = self.record.read_text() if self.record.exists() else ""
        for line in text.splitlines():
            kind, node, pid, at = line.split()
            if kind == "start":
                found[int(pid)] = Copy(node, int(pid), float(at))
            elif kind == "term":
                found[int(pid)].term = float(at)
            elif kind == "exit":
                found[int(pid)].exit = float(at)
        return sorted(found.values(), key=lambda c: c.start)

    def running_on(self, node: str) -> bool:
        return any(c.node == node and c.exit is None for c in self.copies())

    def log(self, node: str) -> str:
        return (self.logs / f"{node}.supervisor.log").read_text()


def assert_never_two(copies: list[Copy]) -> None:
    """Each copy exited before the next one started (the record is wall-clock time on one host)."""
    for before, after in itertools.pairwise(copies):
        assert before.exit is not None, f"{before} still ran when {after} started"
        assert before.exit < after.start, f"{before} overlapped {after}"


@pytest.fixture
def background(litefs_real_cluster: LiteFSClusterFactory, tmp_path: Path) -> Iterator[Background]:
    cluster = litefs_real_cluster(instances=3, lease="consul")
    run = Background(cluster, tmp_path / "record", tmp_path)
    for node in cluster.ids:
        run.start(node)
    yield run
    for proc in run.procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in run.procs.values():
        try:
            proc.wait(timeout=GRACE + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_graceful_handoffs_never_overlap(background: Background) -> None:
    cluster = background.cluster
    wait_until(lambda: background.running_on("node1"), timeout=SETTLE, what="node1's copy started")
    for target in ("node2", "node3", "node1"):
        cluster.promote(target, timeout=SETTLE)
        wait_until(functools.partial(background.running_on, target), timeout=SETTLE, what=f"{target} started it")
    copies = background.copies()
    assert [c.node for c in copies] == ["node1", "node2", "node3", "node1"]
    assert_never_two(copies)
    for before, after in itertools.pairwise(copies):
        assert before.term is not None
        assert before.exit is not None
        print(  # the figures in docs/background-work.md
            f"handoff {before.node}->{after.node}: old copy told to stop, new copy started "
            f"{after.start - before.term:.3f} s later; gap after the old copy's exit {after.start - before.exit:.3f} s"
        )
    assert "stopping " in background.log("node1")
    assert "started " in background.log("node2")


def test_kill_9_of_the_primarys_litefs_stops_its_copy_before_another_starts(background: Background) -> None:
    cluster = background.cluster
    wait_until(lambda: background.running_on("node1"), timeout=SETTLE, what="node1's copy started")
    cluster.kill_node("node1")
    new = cluster.wait_primary(timeout=SETTLE)
    assert new in ("node2", "node3")
    wait_until(lambda: background.running_on(new), timeout=SETTLE, what=f"{new}'s copy started")
    copies = background.copies()
    assert [c.node for c in copies] == ["node1", new]
    old = copies[0]
    assert old.term is not None
    assert old.exit is not None
    assert_never_two(copies)
    print(
        f"kill -9 of node1's LiteFS: its copy told to stop; {new}'s copy started "
        f"{copies[1].start - old.term:.3f} s later ({copies[1].start - old.exit:.3f} s after the old copy exited)"
    )
    # The killed node comes back as a replica: no second copy there.
    cluster.start_node("node1")
    cluster.wait_primary(new, timeout=SETTLE)
    assert not background.running_on("node1")
    assert len([c for c in background.copies() if c.exit is None]) == 1
    assert os.path.exists(background.record)


class PartitionableCluster(LiteFSCluster):
    """node1 reaches Consul, and the other nodes reach node1, through relays the test can break.

    :meth:`partition`: node1's Consul traffic stalls (packets dropped: its
    lease renewal hangs, as LiteFS's Consul client has no timeout) and the
    other nodes' connections to it are closed (they see it gone). :meth:`heal`
    lets its Consul traffic through again.
    """

    lease_relay: TcpRelay | None = None
    peer_relay: TcpRelay | None = None

    def _config(self, node: LiteFSNode) -> dict[str, Any]:
        config = super()._config(node)
        if node.id == "node1":
            assert self.consul is not None
            if self.lease_relay is None:
                parts = urlsplit(self.consul.url)
                self.lease_relay = TcpRelay((parts.hostname or "127.0.0.1", parts.port or 80))
                self.peer_relay = TcpRelay(("127.0.0.1", node.http_port))
            config["lease"]["consul"]["url"] = self.lease_relay.url
            assert self.peer_relay is not None
            config["lease"]["advertise-url"] = self.peer_relay.url
        return config

    def partition(self) -> None:
        assert self.lease_relay is not None
        assert self.peer_relay is not None
        self.lease_relay.pause()
        self.peer_relay.close()

    def heal(self) -> None:
        assert self.lease_relay is not None
        self.lease_relay.resume()

    def close(self) -> None:
        if self.lease_relay is not None:
            self.lease_relay.resume()
        super().close()
        for relay in (self.lease_relay, self.peer_relay):
            if relay is not None:
                relay.close()


def test_a_partitioned_primary_keeps_its_copy_while_another_node_takes_the_lease(tmp_path: Path) -> None:
    """The documented limit: LiteFS's lease renewal has no timeout, so a partitioned primary stays primary.

    node1 (the primary) is cut off: its lease renewal hangs, its LiteFS
    still says primary and its copy runs on; the others lose it, see its
    Consul session expire and elect a new primary, whose copy starts. Two
    copies run until the partition heals; then node1 steps down and its copy stops.
    """
    require_litefs()
    cluster = PartitionableCluster(instances=3, lease="consul", base_dir=tmp_path / "cluster")
    run = Background(cluster, tmp_path / "record", tmp_path)
    try:
        cluster.start()
        for node in cluster.ids:
            run.start(node)
        wait_until(lambda: run.running_on("node1"), timeout=SETTLE, what="node1's copy started")
        cluster.partition()
        cut = time.time()

        def elsewhere() -> bool:
            return any(c.node != "node1" for c in run.copies())

        wait_until(elsewhere, timeout=SETTLE, what="a copy on the new primary")
        assert run.running_on("node1")  # two copies at once
        assert read_node_state(cluster.mount_dir("node1"), "node1").role is Role.PRIMARY  # LiteFS still says so
        cluster.heal()
        healed = time.time()
        wait_until(lambda: not run.running_on("node1"), timeout=SETTLE, what="node1's copy stopped after the heal")
        old = run.copies()[0]
        new = next(c for c in run.copies() if c.node != "node1")
        assert old.exit is not None
        assert old.exit > healed  # it ran through the whole partition
        print(
            f"partition of node1: {new.node}'s copy started {new.start - cut:.3f} s after the cut, next to node1's; "
            f"node1's copy stopped {old.exit - healed:.3f} s after the heal"
        )
    finally:
        for proc in run.procs.values():
            proc.terminate()
        for proc in run.procs.values():
            proc.wait(timeout=GRACE + 10)
        cluster.close()
