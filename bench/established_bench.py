"""What holding back a newly named primary costs a failover and a handoff, on real LiteFS.

    python -m bench.established_bench [--rounds 4]

Three LiteFS nodes with a Consul lease (TTL 3 s, lock-delay 1 s), the
Starlette test app on each behind the Fly-like front proxy, and a writer
that posts to a node which is neither the old nor the new primary, one write
after another. For each primary change it measures the time from the change
(``promote``: LiteFS's graceful handoff; ``kill``: kill -9 of the primary's
LiteFS, then restarted) to the first write acknowledged by the new primary,
and counts the writes replayed to the old primary after the change. Two
variants in one run, the same cluster settings: the shipped hold
(``state_cache.ESTABLISHED_AFTER`` = 0.1 s) and none (0).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from litefs_route.devcluster.litefs import LiteFSCluster  # noqa: E402
from litefs_route.state_cache import ESTABLISHED_AFTER  # noqa: E402

APP = "tests.devcluster_apps.asgi_app:app"
NODES = ("node1", "node2", "node3")


@dataclass
class Writer:
    """Posts one write after another to *node* through the front; records (sent, acked, status, instance)."""

    front_url: str
    node: str
    results: list[tuple[float, float, int, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.front_url, timeout=30) as client:
            for n in itertools.count():
                if self.stop.is_set():
                    return
                sent = time.monotonic()
                response = client.post(
                    "/write", data={"id": f"{self.node}-{sent}-{n}"}, headers={"fly-force-instance-id": self.node}
                )
                instance = response.json().get("instance", "") if response.status_code == 200 else ""
                self.results.append((sent, time.monotonic(), response.status_code, instance))


def measure(hold: float, rounds: int) -> dict[str, list[float]]:
    """Seconds from each change to the first write the new primary acknowledged, by kind of change."""
    env = {"DEVCLUSTER_ESTABLISHED_AFTER": str(hold), "DEVCLUSTER_PRIMARY_WAIT": "15"}
    gaps: dict[str, list[float]] = {"promote": [], "kill": [], "replayed to the old primary": []}
    base = tempfile.mkdtemp(prefix="established-bench-")
    cluster = LiteFSCluster(
        APP,
        instances=list(NODES),
        lease="consul",
        consul_ttl=3.0,
        consul_lock_delay=1.0,
        base_dir=base,
        env=env,
        app_dir=ROOT,
    )
    with contextlib.closing(cluster):
        cluster.start()
        cluster.wait_replicated()
        for kind in ["promote", "kill"] * rounds:
            old = cluster.wait_primary()
            new = next(n for n in NODES if n != old) if kind == "promote" else None
            third = next(n for n in NODES if n not in (old, new))
            if kind == "kill":  # the new primary is whichever wins: write through a replica that is running
                third = next(n for n in NODES if n != old)
            writer = Writer(cluster.front_url, third)
            thread = threading.Thread(target=writer.run, daemon=True)
            thread.start()
            while not writer.results:
                time.sleep(0.01)
            replays_before = len(cluster.front.replays_to(old))
            changed = time.monotonic()
            if kind == "promote":
                assert new is not None
                cluster.promote(new)
            else:
                cluster.kill_node(old)
            primary = cluster.wait_primary(timeout=60)
            while not any(r[0] >= changed and r[3] == primary for r in writer.results):
                time.sleep(0.01)
            writer.stop.set()
            thread.join(60)
            first = min(r[1] for r in writer.results if r[0] >= changed and r[3] == primary)
            gaps[kind].append(first - changed)
            gaps["replayed to the old primary"].append(float(len(cluster.front.replays_to(old)) - replays_before))
            if kind == "kill":
                cluster.start_node(old)
                cluster.wait_primary()
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="handoffs and kills per variant (default 4 each)")
    args = parser.parse_args()
    results = {hold: measure(hold, args.rounds) for hold in (ESTABLISHED_AFTER, 0.0)}
    print(f"\n{'change':<30} {'hold ' + format(ESTABLISHED_AFTER, 'g') + ' s':>22} {'no hold':>22}")
    for kind in ("promote", "kill"):
        cells = []
        for hold in (ESTABLISHED_AFTER, 0.0):
            values = results[hold][kind]
            cells.append(f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})")
        print(f"{'first write on the new primary, ' + kind:<30} {cells[0]:>22} {cells[1]:>22}")
    counts = [sum(results[hold]["replayed to the old primary"]) for hold in (ESTABLISHED_AFTER, 0.0)]
    print(f"{'writes replayed to the old primary':<30} {counts[0]:>22.0f} {counts[1]:>22.0f}")


if __name__ == "__main__":
    main()
