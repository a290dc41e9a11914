"""``call_on_primary`` against ``halt_lock()`` for the same small write from the same replica, on real LiteFS.

    python -m bench.background_bench               # 3 rounds x 5 s per cell (~2 minutes)
    python -m bench.background_bench --quick       # 1 round x 3 s

Three LiteFS nodes (static lease, node1 primary) running the task app
(``tests/devcluster_apps/tasks_app.py``, WSGI on Werkzeug's threaded
server, one per node). From node2, the bench process writes one row
(``INSERT INTO runs``) either way:

- **call_on_primary**: ``TaskClient.call("add_row", label=...)``: an HTTP
  request to node1's app, which runs the insert, then the wait until node2
  has node1's TXID (read-your-writes included);
- **halt_lock**: ``with halt_lock(node2's db): INSERT`` on node2's own
  connection: LiteFS halts the primary's writes, the insert is sent to it,
  the lock is released (LiteFS's write forwarding).

With 1 and 8 concurrent callers (threads), interleaved by round. Reported:
the median and p95 latency of one write, and writes per second. The report
(Markdown) is printed and written to ``bench/results/background.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from litefs_route import TaskClient, halt_lock  # noqa: E402
from litefs_route_devcluster.litefs import LiteFSCluster  # noqa: E402

SECRET = "bench-secret-shared-by-every-instance"
CALLER = "node2"


def _via_halt(db_path: str) -> Callable[[], None]:
    def write() -> None:
        with (
            halt_lock(db_path, instance_id=CALLER),
            contextlib.closing(sqlite3.connect(db_path, timeout=30)) as db,
            db,
        ):
            db.execute("INSERT INTO runs (label, node) VALUES (?, ?)", (uuid.uuid4().hex, CALLER))

    return write


def _via_task(client: TaskClient) -> Callable[[], None]:
    def write() -> None:
        client.call("add_row", label=uuid.uuid4().hex)

    return write


def _cell(write: Callable[[], None], callers: int, seconds: float) -> tuple[list[float], float]:
    """Run *write* from *callers* threads for *seconds*: (each write's latency, writes per second)."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def caller() -> None:
        while time.monotonic() < stop:
            began = time.perf_counter()
            write()
            took = time.perf_counter() - began
            with lock:
                latencies.append(took)

    began = time.monotonic()
    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, len(latencies) / (time.monotonic() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (3.0 if args.quick else 5.0)
    with (
        tempfile.TemporaryDirectory() as base,
        LiteFSCluster(
            "tests.devcluster_apps.tasks_app:wsgi_app",
            instances=3,
            lease="static",
            base_dir=base,
            app_dir=ROOT,
            env={"TASKS_SECRET": SECRET},
        ) as cluster,
    ):
        client = TaskClient(
            forward_url=cluster.url,
            forward_secret=SECRET,
            litefs_dir=cluster.mount_dir(CALLER),
            instance_id=CALLER,
            litefs_api_url=cluster.nodes[CALLER].api_url,
        )
        client.call("add_row", label="warm-up")  # creates the table on the primary
        cluster.wait_replicated()
        ways = {"call_on_primary": _via_task(client), "halt_lock": _via_halt(cluster.db_path(CALLER))}
        results: dict[tuple[str, int], list[tuple[list[float], float]]] = {}
        for _ in range(rounds):
            for callers in (1, 8):
                for name, write in ways.items():
                    results.setdefault((name, callers), []).append(_cell(write, callers, seconds))
    lines = [
        f"# call_on_primary vs halt_lock: one small write from a replica (real LiteFS, {rounds} x {seconds:g} s)",
        "",
        "| way | callers | median latency (ms) | p95 latency (ms) | writes/s (median of rounds) |",
        "|---|---|---|---|---|",
    ]
    for (name, callers), cells in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        latencies = sorted(x for cell, _ in cells for x in cell)
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        rate = statistics.median(r for _, r in cells)
        lines.append(
            f"| {name} | {callers} | {statistics.median(latencies) * 1000:.1f} | {p95 * 1000:.1f} | {rate:.0f} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "background.md").write_text(report)


if __name__ == "__main__":
    main()
