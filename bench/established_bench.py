"""What holding back a newly named primary costs a failover and a handoff, on real LiteFS.

    python -m bench.established_bench [--rounds 4]

Three LiteFS nodes with a Consul lease (TTL 3 s, lock-delay 1 s), the
Starlette test app on each behind the Fly-like front proxy, and a writer
that posts to one replica, one write after another. For each primary change
(``promote``: LiteFS's graceful handoff; ``kill``: kill -9 of the primary's
LiteFS, restarted after) the writer's node's own LiteFS event stream says
when that node dropped the old primary and when it named the new one for
good. Measured:

- *named → first write* (handoffs): from the replica's LiteFS naming the
  new primary (its last ``primaryChange``) to the first write the new
  primary acknowledged: what the hold adds;
- *stale replays*: writes replayed to the old primary after the replica's
  LiteFS had dropped it (the lease-expiry flicker, and nothing else).

Two variants in one run, the same cluster settings: the shipped hold
(``state_cache.ESTABLISHED_AFTER``) and none (0).
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

from litefs_route._events import PrimaryChange, read_events  # noqa: E402
from litefs_route._state_cache import ESTABLISHED_AFTER  # noqa: E402
from litefs_route_devcluster.litefs import LiteFSCluster  # noqa: E402

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


class Names:
    """The (time, primary) of each ``primaryChange`` a node's LiteFS sends, in a thread."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url
        self.changes: list[tuple[float, str | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with contextlib.suppress(OSError):
            for event in read_events(self.api_url, timeout=None, quiet_after=0.2):
                if self.stop.is_set():
                    return
                if isinstance(event, PrimaryChange):
                    self.changes.append((time.monotonic(), event.primary))


def measure(hold: float, rounds: int) -> dict[str, list[float]]:
    """Per kind of change: seconds from the replica naming the new primary to its first write; stale replays."""
    env = {"DEVCLUSTER_ESTABLISHED_AFTER": str(hold), "DEVCLUSTER_PRIMARY_WAIT": "15"}
    out: dict[str, list[float]] = {"promote": [], "kill": [], "stale promote": [], "stale kill": []}
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
            new = next(n for n in NODES if n != old)
            # promote: write through the third node; kill: the new primary is whoever wins, so watch both replicas
            writers_at = [n for n in NODES if n not in (old, new)] if kind == "promote" else [new]
            node = writers_at[0]
            names = Names(cluster.nodes[node].api_url)
            writer = Writer(cluster.front_url, node)
            thread = threading.Thread(target=writer.run, daemon=True)
            thread.start()
            while not writer.results:
                time.sleep(0.01)
            changed = time.monotonic()
            if kind == "promote":
                cluster.promote(new)
            else:
                cluster.kill_node(old)
            primary = cluster.wait_primary(timeout=60)
            if primary == node:  # the writer's node won the lease itself: nothing to route
                writer.stop.set()
                names.stop.set()
                thread.join(60)
            else:
                while not any(r[0] >= changed and r[3] == primary for r in writer.results):
                    time.sleep(0.01)
                writer.stop.set()
                names.stop.set()
                thread.join(60)
                after = [(t, p) for t, p in names.changes if t >= changed]
                dropped = next((t for t, p in after if p != old), None)
                named = max((t for t, p in after if p == primary), default=None)
                first = min(r[1] for r in writer.results if r[0] >= changed and r[3] == primary)
                if named is not None:
                    out[kind].append(first - named)
                stale = [e for e in cluster.front.replays_to(old) if dropped is not None and e.at > dropped]
                out[f"stale {kind}"].append(float(len(stale)))
            if kind == "kill":
                cluster.start_node(old)
                cluster.wait_primary()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="handoffs and kills per variant (default 4 each)")
    args = parser.parse_args()
    holds = (ESTABLISHED_AFTER, 0.0)
    results = {hold: measure(hold, args.rounds) for hold in holds}
    print(f"\n{'':<46} {'hold ' + format(ESTABLISHED_AFTER, 'g') + ' s':>22} {'no hold':>22}")
    # (After a kill, the writer's first write is usually one decided for the old primary before the
    # replica's LiteFS dropped it, which waits out primary_wait there: the same in both variants.)
    for kind in ("promote",):
        cells = []
        for hold in holds:
            values = results[hold][kind]
            cells.append(
                f"{statistics.median(values) * 1000:.0f} ms ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"
                if values
                else "-"
            )
        print(f"{'replica names the new primary -> first write, ' + kind:<46} {cells[0]:>22} {cells[1]:>22}")
    for kind in ("promote", "kill"):
        counts = [sum(results[hold][f"stale {kind}"]) for hold in holds]
        print(f"{'replays to the old primary after it was dropped, ' + kind:<46} {counts[0]:>22.0f} {counts[1]:>22.0f}")


if __name__ == "__main__":
    main()
