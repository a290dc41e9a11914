"""``litefs-route dev`` / ``python -m litefs_route_devcluster``: a local cluster from the terminal.

::

    python -m litefs_route_devcluster [APP] [--instances N] [--port PORT] [--litefs | --imitation | --postgres]
                                      [--lag SECONDS]

Starts the cluster, prints what to open and what to try, then reads simple
commands from stdin (``promote node2``, ``lag 2``, ``stop node1``,
``start node1``, ``status``, ``help``, ``quit``). When stdin is not a
terminal or is closed, it keeps running until SIGINT or SIGTERM.

It runs real LiteFS nodes (FUSE mounts, a Consul lease served by the
stand-in: :class:`~litefs_route_devcluster.litefs.LiteFSCluster`) where
LiteFS can run, else the imitation (:class:`Cluster`), and says which.
``--litefs`` insists on real LiteFS; ``--imitation`` (or ``--lag``, which
only the imitation has) asks for the imitation.

``--postgres`` runs the Postgres flavour instead
(:class:`~litefs_route_devcluster.postgres_cluster.PostgresDevCluster`): a
real PostgreSQL primary and hot standby, instances in two regions (``ord``
reads the primary, ``lhr`` the standby) with ``source="postgres"``; its
commands are ``status``, ``pause``/``resume`` (the standby's replay),
``stop ID``/``start ID``, ``help``, ``quit``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, TextIO

from .cluster import DEFAULT_APP, Cluster, port_free
from .interface import DevCluster
from .litefs import LITEFS_VERSION, LiteFSCluster, litefs_unavailable
from .postgres import postgres_unavailable
from .postgres_cluster import DEMO_POSTGRES_APP, DEMO_SCHEMA, PRIMARY_REGION, REPLICA_REGION, PostgresDevCluster

__all__ = ["build_parser", "main", "run_command"]

logger = logging.getLogger("litefs_route_devcluster")

_HELP = """commands:
  status                 who is primary, each instance's TXID
  promote ID [SECONDS]   fail over to ID (optionally with a longer no-primary period)
  crash ID               fail over to ID, losing writes not yet replicated
  kill ID                SIGKILL ID (a crash); the next running instance takes over
  lag SECONDS            change the replication lag
  stop ID / start ID     stop or restart an instance
  quit                   stop everything"""

_LITEFS_HELP = """commands (real LiteFS):
  status                 who is primary, each node's TXID
  promote ID             hand the lease to ID (LiteFS's own handoff)
  kill ID                SIGKILL ID's LiteFS: its lease expires, another node takes over
  stop ID / start ID     stop ID's LiteFS gracefully (it releases its lease) / start it again
  quit                   stop everything"""

_POSTGRES_HELP = f"""commands (Postgres):
  status                 the servers' WAL positions, each instance's region
  pause                  pause the standby's replay (pg_wal_replay_pause()): {REPLICA_REGION} falls behind
  resume                 resume it (pg_wal_replay_resume()): {REPLICA_REGION} catches up
  stop ID / start ID     stop or restart an app instance (the database servers are untouched)
  quit                   stop everything
  (no promote, kill: which region is primary is configuration, PRIMARY_REGION={PRIMARY_REGION},
   not an election; after a real failover (pg_promote()) you set PRIMARY_REGION and redeploy)"""

#: The front's health check of each instance when ``--health-path`` is not given (LiteFS's proxy's path).
DEFAULT_HEALTH_PATH = "/litefs/health"
#: The same for ``--postgres`` (the Postgres demo's ``health_path``).
DEFAULT_POSTGRES_HEALTH_PATH = "/health"


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
    parser.add_argument(
        "--instances", "-n", type=int, default=None, help="how many instances (3; with --postgres 2, one per region)"
    )
    parser.add_argument("--lag", type=float, default=None, help="replication lag in seconds (the imitation only)")
    parser.add_argument("--port", type=int, default=8080, help="the front proxy's port (8080; 0 picks a free one)")
    parser.add_argument("--database", default="app.db", help="the database file name (app.db)")
    parser.add_argument("--region", default="local", help="FLY_REGION of every instance (local)")
    parser.add_argument("--interface", choices=["auto", "asgi", "wsgi"], default="auto", help="app interface (auto)")
    parser.add_argument("--base-dir", help="where the instance folders go (a temporary directory)")
    parser.add_argument("--quiet", "-q", action="store_true", help="do not echo the instances' output")
    parser.add_argument(
        "--setup",
        metavar="CMD",
        help="a shell command run once on the primary node, with its environment (LITEFS_DIR, DATABASE_FILENAME, "
        "DATABASE_PATH...), before the app servers start and traffic is let in: create your schema here",
    )
    parser.add_argument(
        "--health-path",
        default=None,
        metavar="PATH",
        help="the app's health check (the middleware's health_path): the front takes an instance whose check "
        f"fails out of rotation ({DEFAULT_HEALTH_PATH}, with --postgres {DEFAULT_POSTGRES_HEALTH_PATH}; '' for none)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--litefs",
        action="store_true",
        help=f"real LiteFS {LITEFS_VERSION} nodes, or fail (default: real LiteFS where it can run)",
    )
    which.add_argument("--imitation", action="store_true", help="the imitation (plain folders), even where LiteFS runs")
    which.add_argument(
        "--postgres",
        action="store_true",
        help=f"Postgres instead of LiteFS: a real PostgreSQL primary and hot standby, instances in two regions "
        f"({PRIMARY_REGION}, the primary region, and {REPLICA_REGION}), source='postgres'; needs PostgreSQL's "
        "server binaries (bash .ci/install-postgres, or Debian's postgresql package) and psycopg 3",
    )
    return parser


def _banner(cluster: DevCluster) -> str:
    primary = cluster.primary or "?"
    replica = next((i for i in cluster.ids if i != primary), primary)
    front = cluster.front_url
    if isinstance(cluster, LiteFSCluster):
        what = f"real LiteFS {LITEFS_VERSION}, Consul lease (stand-in)"
        lag = "replication is LiteFS's own"
        failover = f"type 'promote {replica}' (a handoff) or 'kill {primary}' (a crash) while traffic flows"
        help_text = _LITEFS_HELP
    elif isinstance(cluster, Cluster):
        what = "an imitation of LiteFS: a development tool"
        # The imitation writes <db>-pos on a poll, so a cookie minted right after
        # a commit can name the TXID before it: say so rather than promise.
        lag = f"lag {cluster.lag:g} s, try 'lag 2'; the imitation's check is approximate, real LiteFS's exact"
        failover = f"type 'promote {replica}' or 'kill {primary}' while traffic flows"
        help_text = _HELP
    else:
        raise TypeError(f"not a dev cluster this command runs: {cluster!r}")
    health = cluster.front.health_path
    if health is None:
        rotation = "every instance stays in rotation (--health-path: none)"
    else:
        rotation = (
            f"an instance whose health check (GET {health}, every {cluster.front.health_interval:g} s) fails "
            "is taken out of rotation until it passes again, as Fly does"
        )
    return f"""
litefs-route dev cluster ({what})
{cluster.status()}

Open {front}/ (requests are load-balanced round-robin, like Fly's proxy;
{rotation}).
Things to try:
  * post a form on a replica and watch it land on the primary ({primary}):
      curl -i -H 'fly-force-instance-id: {replica}' -d 'text=hello' {front}/entries
    the replica answers 409 + fly-replay, the front replays the request on {primary}
    (/entries is the demo's form, and the example apps'; with your own app, post to one of its paths).
  * read your writes: post, then read from every instance ({lag}).
  * fail the primary over: {failover}.
Logs: {cluster.base_dir}/logs
{help_text}
"""


def run_command(cluster: DevCluster, line: str, out: TextIO) -> bool:
    """Run one interactive command; False when it was ``quit``."""
    words = line.split()
    if not words:
        return True
    command, args = words[0].lower(), words[1:]
    real = isinstance(cluster, LiteFSCluster)
    try:
        if command in ("quit", "exit", "q"):
            return False
        if command == "status":
            print(cluster.status(), file=out)
        elif command in ("help", "?"):
            print(_LITEFS_HELP if real else _HELP, file=out)
        elif command in ("promote", "kill", "stop", "start") and len(args) == 1:
            _run_node_command(cluster, command, args[0], out)
        elif isinstance(cluster, Cluster) and command in ("promote", "crash") and args:
            # The imitation's own: a longer no-primary period, or a crash to a chosen instance.
            handover = _seconds(args[1], command) if len(args) > 1 else None
            cluster.fail_over(args[0], handover=handover, graceful=command == "promote")
            print(f"primary is now {cluster.primary}", file=out)
        elif isinstance(cluster, Cluster) and command == "lag" and len(args) == 1:
            cluster.set_lag(_seconds(args[0], "lag"))
            print(f"lag is now {cluster.lag:g} s", file=out)
        else:
            print(f"unknown command: {line.strip()!r}\n{_LITEFS_HELP if real else _HELP}", file=out)
    except _CommandError as exc:
        print(f"error: {exc}", file=out)
    except KeyError as exc:  # str(KeyError) quotes its message: show the message
        print(f"error: {exc.args[0] if exc.args else exc}", file=out)
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"error: {exc}", file=out)
    out.flush()
    return True


def _run_node_command(cluster: DevCluster, command: str, instance_id: str, out: TextIO) -> None:
    """``promote``, ``kill``, ``stop``, ``start``: the same on both clusters (:class:`DevCluster`)."""
    if instance_id not in cluster.ids:
        raise KeyError(f"no instance {instance_id!r}; instances: {cluster.ids}")
    if command == "promote":
        cluster.promote(instance_id)
    elif command == "kill":
        cluster.kill_node(instance_id)
        if isinstance(cluster, LiteFSCluster):
            print(
                f"killed {instance_id}'s LiteFS; waiting for its lease to expire ({cluster.consul_ttl:g} s)", file=out
            )
            out.flush()
        cluster.wait_primary()
    elif command == "stop":
        cluster.stop_node(instance_id)
    else:
        cluster.start_node(instance_id)
        print(f"started {instance_id} on {cluster.url(instance_id)}", file=out)
    print(f"{command} {instance_id}: primary is now {cluster.primary or '(none)'}", file=out)


class _CommandError(Exception):
    """A command typed wrong: the message says how to type it."""


def _seconds(text: str, command: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _CommandError(f"{command} takes a number of seconds, not {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise _CommandError(f"{command} takes a number of seconds >= 0, not {text!r}")
    return value


def _postgres_banner(cluster: PostgresDevCluster) -> str:
    front = cluster.front_url
    ord_ids = cluster.in_region(cluster.primary_region)
    lhr_ids = cluster.in_region(cluster.replica_region)
    replica = lhr_ids[0]
    health = cluster.front.health_path
    rotation = (
        "every instance stays in rotation (--health-path: none)"
        if health is None
        else f"an instance whose health check (GET {health}) fails, such as a standby too far behind, "
        "is taken out of rotation"
    )
    ord_, lhr = cluster.primary_region, cluster.replica_region
    return f"""
litefs-route dev cluster (Postgres: a real primary and streaming hot standby, source="postgres")
{cluster.status()}

Regions: {", ".join(ord_ids)} in {cluster.primary_region} (PRIMARY_REGION: DATABASE_URL is the primary);
         {", ".join(lhr_ids)} in {cluster.replica_region} (DATABASE_URL is the hot standby).
Writes in {lhr} are replayed to region {ord_} (fly-replay: region={ord_}).

Open {front}/ (requests are load-balanced round-robin, like Fly's proxy; {rotation}).
Things to try:
  * post the form in {cluster.replica_region} and watch it run in {cluster.primary_region}:
      curl -i -H 'fly-force-instance-id: {replica}' -d 'text=hello' {front}/entries
    {replica} answers 409 + fly-replay: region={cluster.primary_region}, the front replays the request there
    (the answer's Demo-Instance, Demo-Region and Demo-Replayed-From headers say where it ran).
  * read your writes: the answer sets the __lsn cookie (the primary's WAL position); a read in
    {cluster.replica_region} carrying it waits until the standby has replayed that far. Type 'pause', post,
    read in {lhr}: after consistency_wait (1 s) the read is replayed to {ord_}; then 'resume'.
Logs: {cluster.base_dir}/logs
PostgreSQL data: {cluster.pair.base_dir} (primary.log, standby.log)
{_POSTGRES_HELP}
"""


def run_postgres_command(cluster: PostgresDevCluster, line: str, out: TextIO) -> bool:
    """Run one interactive command of the Postgres cluster; False when it was ``quit``."""
    words = line.split()
    if not words:
        return True
    command, args = words[0].lower(), words[1:]
    try:
        if command in ("quit", "exit", "q"):
            return False
        if command == "status":
            print(cluster.status(), file=out)
        elif command in ("help", "?"):
            print(_POSTGRES_HELP, file=out)
        elif command == "pause" and not args:
            cluster.pause_replay()
            print(f"the standby's replay is paused: {cluster.replica_region} reads fall behind", file=out)
        elif command == "resume" and not args:
            cluster.resume_replay()
            print(f"the standby's replay resumed: {cluster.replica_region} catches up", file=out)
        elif command in ("stop", "start") and len(args) == 1:
            if args[0] not in cluster.ids:
                raise KeyError(f"no instance {args[0]!r}; instances: {cluster.ids}")
            if command == "stop":
                cluster.stop_node(args[0])
                print(f"stopped {args[0]}", file=out)
            else:
                cluster.start_node(args[0])
                print(f"started {args[0]} on {cluster.url(args[0])}", file=out)
        elif command in ("promote", "kill", "crash", "lag"):
            print(
                f"{command}: not in the Postgres cluster; the primary region is configuration "
                f"(PRIMARY_REGION={cluster.primary_region}), not a lease. 'pause' holds replication back.",
                file=out,
            )
        else:
            print(f"unknown command: {line.strip()!r}\n{_POSTGRES_HELP}", file=out)
    except KeyError as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=out)
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"error: {exc}", file=out)
    out.flush()
    return True


def _postgres_refusal(args: argparse.Namespace) -> str | None:
    """Why ``--postgres`` cannot run with these options or here (one line), or None."""
    if args.lag is not None:
        return "--lag is the imitation's; with --postgres type 'pause' and 'resume' to hold the standby back"
    if args.instances is not None and args.instances < 2:
        return "--postgres needs at least 2 instances, one in each region"
    reason = postgres_unavailable()
    if reason is not None:
        return reason
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg 3 is not installed: pip install 'litefs-route[postgres]'"
    return None


def main(argv: Sequence[str] | None = None, *, prog: str = "litefs-route dev") -> int:
    """The ``dev`` command. *argv* excludes the program (and sub-command) name."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    real = False
    if args.postgres:
        refusal = _postgres_refusal(args)
        if refusal is not None:
            print(f"litefs-route dev --postgres: {refusal}", file=sys.stderr)
            return 2
    else:
        if args.litefs and args.lag is not None:
            print("litefs-route dev: --lag is the imitation's; real LiteFS replicates at its own pace", file=sys.stderr)
            return 2
        reason = litefs_unavailable()
        if args.litefs and reason is not None:
            print(f"litefs-route dev --litefs: {reason}; without --litefs the imitation runs anywhere", file=sys.stderr)
            return 2
        real = reason is None and not args.imitation and args.lag is None
        if not real and not args.imitation and args.lag is None:
            print(f"litefs-route dev: running the imitation ({reason})", file=sys.stderr)
    if args.port and not port_free("127.0.0.1", args.port):
        print(
            f"litefs-route dev: port {args.port} is in use (another dev cluster?); "
            "pick another with --port N, or --port 0 for any free port",
            file=sys.stderr,
        )
        return 2
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()
        raise _Stop

    # SIGHUP: the terminal was closed. Each ends in the same clean-up.
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    echo = None if args.quiet else lambda instance, line: print(f"[{instance}] {line}", file=sys.stderr)
    default_health = DEFAULT_POSTGRES_HEALTH_PATH if args.postgres else DEFAULT_HEALTH_PATH
    health_path = (default_health if args.health_path is None else args.health_path) or None
    cluster: DevCluster | PostgresDevCluster
    if args.postgres:
        demo = args.app == DEFAULT_APP
        cluster = PostgresDevCluster(
            DEMO_POSTGRES_APP if demo else args.app,
            instances=2 if args.instances is None else args.instances,
            port=args.port,
            interface=args.interface,
            base_dir=args.base_dir,
            echo=echo,
            health_path=health_path,
            setup=args.setup,
            schema=DEMO_SCHEMA if demo else None,
        )
    else:
        shared: dict[str, Any] = {
            "instances": 3 if args.instances is None else args.instances,
            "port": args.port,
            "database": args.database,
            "region": args.region,
            "interface": args.interface,
            "base_dir": args.base_dir,
            "echo": echo,
            "health_path": health_path,
            "setup": args.setup,
        }
        if real:
            cluster = LiteFSCluster(args.app, lease="consul", **shared)
        else:
            cluster = Cluster(args.app, lag=args.lag or 0.0, **shared)
    try:
        try:
            cluster.start()
        except RuntimeError as exc:
            # An instance that would not start: its log's last line says why.
            reason = str(exc).strip().splitlines()[-1]
            print(f"litefs-route dev: {reason}", file=sys.stderr)
            return 1
        if isinstance(cluster, PostgresDevCluster):
            print(_postgres_banner(cluster), flush=True)
        else:
            print(_banner(cluster), flush=True)
        print(f"ready: front {cluster.front_url}", flush=True)
        for line in sys.stdin:
            done = (
                run_postgres_command(cluster, line, sys.stdout)
                if isinstance(cluster, PostgresDevCluster)
                else run_command(cluster, line, sys.stdout)
            )
            if not done:
                break
        else:
            # stdin closed (or never was a terminal): run until a signal.
            print("stdin closed; running until SIGINT or SIGTERM", flush=True)
            # A short timeout: a signal that lands just before a long blocking
            # wait would only be handled when the wait ends.
            while not stop.wait(0.2):
                pass
    except (_Stop, KeyboardInterrupt):
        if not received:  # a KeyboardInterrupt raised before our handler was in place
            received.append(signal.SIGINT)
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
    # Ctrl-C and a closed terminal exit as the shell expects (128 + signal);
    # SIGTERM, end of input and `quit` are the normal ways to stop: 0.
    first = received[0] if received else None
    return 128 + first if first in (signal.SIGINT, signal.SIGHUP) else 0
