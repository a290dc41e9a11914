"""``run --while-primary`` on three real LiteFS nodes: when the new primary's copy starts, and any overlap.

    python -m bench.background_handoff                  # default start delay (grace + 1 = 3 s), 6 handoffs, 3 kills
    python -m bench.background_handoff --start-delay 0  # no delay: what LiteFS's own handoff leaves

Consul lease (the stand-in, TTL 3 s, lock-delay 0.5 s), ``--grace 2``, the
supervised command of ``tests/test_litefs_background.py`` (it records its
start, SIGTERM and exit, wall clock). For each graceful handoff
(``POST /promote``) and each kill -9 of the primary's LiteFS: how long after
the old copy was told to stop the new one started, and the gap between the
old copy's exit and the new one's start (negative: they overlapped).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from litefs_route_devcluster.litefs import LiteFSCluster  # noqa: E402
from tests.support import wait_until  # noqa: E402
from tests.test_litefs_background import Background, Copy  # noqa: E402

SETTLE = 60.0


def _transition(run: Background, before: int) -> tuple[Copy, Copy]:
    copies = run.copies()
    return copies[before - 1], copies[before]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start-delay", default=None)
    parser.add_argument("--handoffs", type=int, default=6)
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    options = () if args.start_delay is None else ("--start-delay", args.start_delay)
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as base:
        cluster = LiteFSCluster(instances=3, lease="consul", base_dir=Path(base) / "cluster").start()
        run = Background(cluster, Path(base) / "record", Path(base), options=options)
        try:
            for node in cluster.ids:
                run.start(node)
            wait_until(functools.partial(run.running_on, "node1"), timeout=SETTLE, what="a first copy")
            order = ["node2", "node3", "node1"]
            for i in range(args.handoffs):
                target = order[i % 3]
                count = len(run.copies())
                cluster.promote(target, timeout=SETTLE)
                wait_until(functools.partial(run.running_on, target), timeout=SETTLE, what=f"{target}'s copy")
                old, new = _transition(run, count)
                assert old.term is not None
                assert old.exit is not None
                rows.append(("handoff", new.start - old.term, new.start - old.exit))
            for _ in range(args.kills):
                primary = cluster.wait_primary(timeout=SETTLE)
                count = len(run.copies())
                cluster.kill_node(primary)
                new_primary = cluster.wait_primary(timeout=SETTLE)
                wait_until(functools.partial(run.running_on, new_primary), timeout=SETTLE, what="the new copy")
                old, new = _transition(run, count)
                assert old.term is not None
                assert old.exit is not None
                rows.append(("kill -9", new.start - old.term, new.start - old.exit))
                cluster.start_node(primary)
        finally:
            for proc in run.procs.values():
                proc.terminate()
            for proc in run.procs.values():
                proc.wait(timeout=30)
            cluster.close()
    delay = "default (grace + 1 = 3 s)" if args.start_delay is None else f"{args.start_delay} s"
    print(f"# run --while-primary on real LiteFS: start delay {delay}, grace 2 s\n")
    print(
        "| event | runs | new copy starts after the old one is told to stop (s): median, max "
        "| least gap after the old one's exit (s) |"
    )
    print("|---|---|---|---|")
    for kind in ("handoff", "kill -9"):
        picked = [r for r in rows if r[0] == kind]
        if picked:
            starts = [r[1] for r in picked]
            gaps = [r[2] for r in picked]
            print(f"| {kind} | {len(picked)} | {statistics.median(starts):.3f}, {max(starts):.3f} | {min(gaps):.3f} |")


if __name__ == "__main__":
    main()
