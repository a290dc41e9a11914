"""``litefs-route dev --postgres``: app instances in two regions over a real PostgreSQL primary and hot standby.

:class:`PostgresDevCluster` starts a :class:`~litefs_route_devcluster.postgres.PostgresPair`
and N instances of the app, alternately in the primary region (``ord``:
``DATABASE_URL`` is the primary) and in a replica region (``lhr``:
``DATABASE_URL`` is the standby), each with ``FLY_REGION``,
``PRIMARY_REGION``, ``FLY_MACHINE_ID`` and ``PRIMARY_DATABASE_URL`` (the
primary, everywhere) set, behind a :class:`~litefs_route_devcluster.proxy.FrontProxy`
that knows each instance's region, so ``fly-replay: region=ord`` lands on an
``ord`` instance.

It is not a :class:`~litefs_route_devcluster.DevCluster`, on purpose: there
the primary is an *instance* that ``promote`` and ``kill_node`` move, here it
is a *region* named by configuration (``PRIMARY_REGION``), which no command
of a running cluster changes. What it has instead: :meth:`pause_replay` and
:meth:`resume_replay` (hold the standby back, to watch read-your-writes
wait), :meth:`stop_node` / :meth:`start_node` of an app instance, and
:meth:`status`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping

from .cluster import AppRunner, FrontedCluster, Instance, Interface, free_port, release_port
from .postgres import PostgresPair
from .proxy import DEFAULT_HEALTH_INTERVAL, FrontProxy
from .reaper import FolderReaper

__all__ = ["DEMO_POSTGRES_APP", "DEMO_SCHEMA", "PRIMARY_REGION", "REPLICA_REGION", "PostgresDevCluster"]

logger = logging.getLogger("litefs_route_devcluster")

#: The app ``litefs-route dev --postgres`` runs when none is named (psycopg 3).
DEMO_POSTGRES_APP = "litefs_route_devcluster.demo_postgres:app"
#: The demo's tables, created on the primary before the instances start.
DEMO_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id bigserial PRIMARY KEY, text text NOT NULL, written_on text NOT NULL, region text NOT NULL
);
CREATE TABLE IF NOT EXISTS visits (id int PRIMARY KEY CHECK (id = 1), count bigint NOT NULL);
"""
#: The region of the primary: its instances read (and write) the primary.
PRIMARY_REGION = "ord"
#: The other region: its instances read the hot standby.
REPLICA_REGION = "lhr"


class PostgresDevCluster(FrontedCluster):
    """N instances of *app* in two regions over a PostgreSQL primary and standby; see the module's docstring.

    *instances* (at least 2) are ``node1``, ``node2``...: odd ones in
    *primary_region*, even ones in *replica_region*. *setup*: a shell command
    run once, with a primary-region instance's environment (``DATABASE_URL``
    is the primary), before the instances start: create the app's schema
    there. *schema*: SQL run on the primary before that (the demo's tables).
    """

    def __init__(
        self,
        app: str = DEMO_POSTGRES_APP,
        *,
        instances: int = 2,
        primary_region: str = PRIMARY_REGION,
        replica_region: str = REPLICA_REGION,
        port: int = 0,
        host: str = "127.0.0.1",
        interface: Interface = "auto",
        env: Mapping[str, str] | None = None,
        app_dir: str | os.PathLike[str] | None = None,
        echo: Callable[[str, str], None] | None = None,
        health_path: str | None = None,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        setup: str | None = None,
        schema: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if instances < 2:
            raise ValueError("the Postgres dev cluster needs at least 2 instances, one in each region")
        if primary_region == replica_region:
            raise ValueError("the primary region and the replica region must differ")
        self.app = app
        self.ids = [f"node{i}" for i in range(1, instances + 1)]
        self.primary_region = primary_region
        self.replica_region = replica_region
        self.regions = {i: primary_region if n % 2 == 0 else replica_region for n, i in enumerate(self.ids)}
        self.host = host
        self.env = dict(env or {})
        self.health_path = health_path
        self.health_interval = health_interval
        self.setup = setup
        self.schema = schema
        self.startup_timeout = startup_timeout
        self.app_dir = os.path.abspath(os.fspath(app_dir) if app_dir is not None else os.getcwd())
        self.runner = AppRunner(
            app,
            interface=interface,
            app_dir=self.app_dir,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
            echo=echo,
        )
        self._front_port = port
        self._owns_base = base_dir is None
        self.base_dir = os.path.abspath(os.fspath(base_dir)) if base_dir is not None else ""
        #: The PostgreSQL primary and standby (their data in a folder of their own, reaped with it).
        self.pair = PostgresPair(startup_timeout=startup_timeout)
        self.instances: dict[str, Instance] = {}
        self._front: FrontProxy | None = None
        self._reaper: FolderReaper | None = None
        self._lock = threading.RLock()
        self._started = False

    # -- life cycle --------------------------------------------------------

    def start(self) -> PostgresDevCluster:
        """Start the pair, the primary region's instances, then (the standby caught up) the others, then the front."""
        if self._started:
            return self
        self._started = True
        try:
            if self._owns_base:
                self.base_dir = tempfile.mkdtemp(prefix="pg-devcluster-")
                self._reaper = FolderReaper(self.base_dir)
            os.makedirs(os.path.join(self.base_dir, "logs"), exist_ok=True)
            self.pair.start()
            if self.schema:
                self.pair.query("primary", self.schema)
            for instance_id in self.ids:
                self.instances[instance_id] = Instance(
                    id=instance_id,
                    region=self.regions[instance_id],
                    host=self.host,
                    port=free_port(self.host),
                    litefs_dir=os.path.join(self.base_dir, instance_id),  # no mount: a folder of its own
                    db_path="",  # no database file: the database is the region's server
                    log_path=os.path.join(self.base_dir, "logs", f"{instance_id}.log"),
                )
                os.makedirs(self.instances[instance_id].litefs_dir, exist_ok=True)
            first = self.instances[self.ids[0]]
            if self.setup:
                log = os.path.join(self.base_dir, "logs", "setup.log")
                self.runner.run_setup(self.setup, first, self._environment(first), log)
            # The primary region first: an app that creates its schema at start-up does it on the primary,
            # and the standby has it before an instance of the other region reads it.
            for region in (self.primary_region, self.replica_region):
                group = [i for i in self.instances.values() if i.region == region]
                if region == self.replica_region:
                    self.pair.wait_caught_up(self.startup_timeout)
                for instance in group:
                    self.runner.spawn(instance, self._environment(instance))
                for instance in group:
                    self.runner.wait_ready(instance)
            self._start_front(
                {i.id: (i.host, i.port) for i in self.instances.values()}, self.regions, self.primary_region, self.host
            )
        except BaseException:
            self.close()
            raise
        logger.info("Postgres dev cluster up: front %s, primary region %s", self.front_url, self.primary_region)
        return self

    def close(self) -> None:
        """Stop the front, every instance (whole process groups) and both PostgreSQL servers. Idempotent."""
        if self._front is not None:
            self._front.close()
        for instance in self.instances.values():
            self.runner.terminate(instance)
            release_port(instance.port)
        self.pair.close()
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None

    # -- accessors -----------------------------------------------------------

    def dsn(self, region: str) -> str:
        """The libpq URL an instance of *region* reads from: the primary's, or the standby's."""
        if region == self.primary_region:
            return self.pair.primary_dsn
        if region == self.replica_region:
            return self.pair.standby_dsn
        raise KeyError(f"no region {region!r}; regions: {self.primary_region}, {self.replica_region}")

    def in_region(self, region: str) -> list[str]:
        """The ids of the instances in *region*."""
        return [i for i in self.ids if self.regions[i] == region]

    def replay_paused(self) -> bool:
        """True while the standby's replay is paused (:meth:`pause_replay`)."""
        return self.pair.query("standby", "SELECT pg_get_wal_replay_pause_state()") != "not paused"

    def status(self) -> str:
        """A human-readable summary: the servers' WAL positions, each instance's region and state."""
        primary_lsn = self.pair.query("primary", "SELECT pg_current_wal_lsn()")
        standby_lsn = self.pair.query("standby", "SELECT pg_last_wal_replay_lsn()")
        paused = "paused" if self.replay_paused() else "replaying"
        lines = [
            f"front {self.front_url}  primary region {self.primary_region}",
            f"  postgres primary  {self.pair.primary_dsn}  region {self.primary_region}  WAL {primary_lsn}",
            f"  postgres standby  {self.pair.standby_dsn}  region {self.replica_region}  "
            f"replayed {standby_lsn} ({paused})",
        ]
        for instance in self.instances.values():
            role = "primary region" if instance.region == self.primary_region else "reads the standby"
            state = "running" if instance.running else "stopped"
            lines.append(f"  {instance.id:<8} {instance.region:<4} {role:<17} {state:<8} {instance.url}")
        lines += self._front_status(replays=True)
        return "\n".join(lines)

    # -- control -------------------------------------------------------------

    def pause_replay(self) -> None:
        """The standby stops applying WAL (it keeps receiving it): reads in the replica region fall behind."""
        self.pair.pause_replay()

    def resume_replay(self) -> None:
        """The standby applies WAL again and catches up."""
        self.pair.resume_replay()

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Wait until the standby has replayed the primary's current WAL position."""
        self.pair.wait_caught_up(timeout)

    def stop_node(self, instance_id: str) -> None:
        """Stop an app instance (its process group); the front skips it. The database servers are untouched."""
        with self._lock:
            self.runner.terminate(self.instances[instance_id])

    def start_node(self, instance_id: str) -> None:
        """Start a stopped app instance again."""
        with self._lock:
            instance = self.instances[instance_id]
            if instance.running:
                return
            self.runner.spawn(instance, self._environment(instance))
            self.runner.wait_ready(instance)

    # -- processes -----------------------------------------------------------

    def _environment(self, instance: Instance) -> dict[str, str]:
        return {
            "FLY_MACHINE_ID": instance.id,
            "FLY_ALLOC_ID": instance.id,
            "FLY_REGION": instance.region,
            "PRIMARY_REGION": self.primary_region,
            "FLY_APP_NAME": "devcluster",
            # The server this region reads: the primary in the primary region, the standby elsewhere.
            "DATABASE_URL": self.dsn(instance.region),
            # The primary, from every region (for an app that writes outside the primary region's requests).
            "PRIMARY_DATABASE_URL": self.pair.primary_dsn,
            **self.env,
        }

    def __repr__(self) -> str:
        return f"PostgresDevCluster({self.app!r}, regions={self.regions!r})"
