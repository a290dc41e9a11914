"""``litefs-route dev`` / ``python -m litefs_route.devcluster``: a local cluster from the terminal.

::

    python -m litefs_route.devcluster [APP] [--instances N] [--lag SECONDS] [--port PORT]

Starts the cluster, prints what to open and what to try, then reads simple
commands from stdin (``promote node2``, ``lag 2``, ``stop node1``,
``start node1``, ``status``, ``help``, ``quit``). When stdin is not a
terminal or is closed, it keeps running until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TextIO

from .cluster import DEFAULT_APP, Cluster

__all__ = ["build_parser", "main", "run_command"]

logger = logging.getLogger("litefs_route.devcluster")

_HELP = """commands:
  status                 who is primary, each instance's TXID
  promote ID [SECONDS]   fail over to ID (optionally with a longer no-primary period)
  crash ID               fail over to ID, losing writes not yet replicated
  lag SECONDS            change the replication lag
  stop ID / start ID     stop or restart an instance
  quit                   stop everything"""


class _Stop(Exception):
    pass


def build_parser(prog: str = "litefs-route dev") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a local LiteFS + Fly cluster (a development tool, not LiteFS): "
        "N instances of APP, replication with lag, and a front proxy that honours fly-replay.",
    )
    parser.add_argument(
        "app", nargs="?", default=DEFAULT_APP, help=f"module:attr of a WSGI or ASGI app ({DEFAULT_APP})"
    )
    parser.add_argument("--instances", "-n", type=int, default=3, help="how many instances (3)")
    parser.add_argument("--lag", type=float, default=0.0, help="replication lag in seconds (0)")
    parser.add_argument("--port", type=int, default=8080, help="the front proxy's port (8080; 0 picks a free one)")
    parser.add_argument("--database", default="app.db", help="the database file name (app.db)")
    parser.add_argument("--region", default="local", help="FLY_REGION of every instance (local)")
    parser.add_argument("--interface", choices=["auto", "asgi", "wsgi"], default="auto", help="app interface (auto)")
    parser.add_argument("--base-dir", help="where the instance folders go (a temporary directory)")
    parser.add_argument("--quiet", "-q", action="store_true", help="do not echo the instances' output")
    return parser


def _banner(cluster: Cluster) -> str:
    primary = cluster.primary or "?"
    replica = next((i for i in cluster.ids if i != primary), primary)
    front = cluster.front_url
    return f"""
litefs-route dev cluster (a development tool, not LiteFS)
{cluster.status()}

Open {front}/ (requests are load-balanced round-robin, like Fly's proxy).
Things to try:
  * post a form on a replica and watch it land on the primary ({primary}):
      curl -i -H 'fly-force-instance-id: {replica}' -d 'text=hello' {front}/entries
    the replica answers 409 + fly-replay, the front replays the request on {primary}
    (/entries is the example apps' form; with your own app, post to one of its paths).
  * read your writes: post, then read from every instance (lag {cluster.lag:g} s; try 'lag 2').
  * fail the primary over: type 'promote {replica}' while traffic flows.
Instance logs: {cluster.base_dir}/logs
{_HELP}
"""


def run_command(cluster: Cluster, line: str, out: TextIO) -> bool:
    """Run one interactive command; False when it was ``quit``."""
    words = line.split()
    if not words:
        return True
    command, args = words[0].lower(), words[1:]
    try:
        if command in ("quit", "exit", "q"):
            return False
        if command == "status":
            print(cluster.status(), file=out)
        elif command in ("promote", "crash") and args:
            handover = float(args[1]) if len(args) > 1 else None
            cluster.promote(args[0], handover=handover, graceful=command == "promote")
            print(f"primary is now {cluster.primary}", file=out)
        elif command == "lag" and len(args) == 1:
            cluster.set_lag(float(args[0]))
            print(f"lag is now {cluster.lag:g} s", file=out)
        elif command == "stop" and len(args) == 1:
            cluster.stop_instance(args[0])
            print(f"stopped {args[0]}", file=out)
        elif command == "start" and len(args) == 1:
            cluster.start_instance(args[0])
            print(f"started {args[0]} on {cluster.url(args[0])}", file=out)
        else:
            print(_HELP, file=out)
    except (KeyError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=out)
    out.flush()
    return True


def main(argv: Sequence[str] | None = None, *, prog: str = "litefs-route dev") -> int:
    """The ``dev`` command. *argv* excludes the program (and sub-command) name."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        raise _Stop

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    cluster = Cluster(
        args.app,
        instances=args.instances,
        lag=args.lag,
        port=args.port,
        database=args.database,
        region=args.region,
        interface=args.interface,
        base_dir=args.base_dir,
        echo=None if args.quiet else lambda instance, line: print(f"[{instance}] {line}", file=sys.stderr),
    )
    try:
        cluster.start()
        print(_banner(cluster), flush=True)
        print(f"ready: front {cluster.front_url}", flush=True)
        for line in sys.stdin:
            if not run_command(cluster, line, sys.stdout):
                break
        else:
            # stdin closed (or never was a terminal): run until a signal.
            print("stdin closed; running until SIGINT or SIGTERM", flush=True)
            # A short timeout: a signal that lands just before a long blocking
            # wait would only be handled when the wait ends.
            while not stop.wait(0.2):
                pass
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        # A second signal (`timeout`, a supervisor, a second ^C) must not cut
        # the clean-up short and orphan the instances: ignore it until done.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            cluster.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print("stopped", flush=True)
    return 0
