"""A local LiteFS + Fly cluster: N app processes, replication, and a replay-honouring front proxy."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Literal

from ._lifecycle import StartsAndCloses
from .ports import release_port, reserve_port
from .proxy import DEFAULT_HEALTH_INTERVAL, FrontProxy
from .reaper import FolderReaper
from .replication import Replicator, resolve_ids

if TYPE_CHECKING:
    pass  # typing's from Python 3.11

__all__ = [
    "DEFAULT_APP",
    "AppRunner",
    "Cluster",
    "FrontedCluster",
    "Instance",
    "WSGIServer",
    "free_port",
    "log_tail",
    "pump_output",
    "release_port",
    "stop_process_group",
    "wait_for",
]

logger = logging.getLogger("litefs_route_devcluster")

#: The app ``litefs-route dev`` runs when none is named: a guest book that
#: needs nothing beyond litefs-route (standard library WSGI).
DEFAULT_APP = "litefs_route_devcluster.demo:app"

Interface = Literal["auto", "asgi", "wsgi"]
#: What serves a WSGI app: Werkzeug's threaded server (else wsgiref) by default, or gunicorn.
WSGIServer = Literal["auto", "gunicorn"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port for a server to bind later, reserved for this process until :func:`release_port` or its exit.

    Not one that was merely free a moment ago: see :mod:`litefs_route_devcluster.ports`.
    """
    return reserve_port(host)


def port_free(host: str, port: int) -> bool:
    """True if *host*:*port* can be listened on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the front proxy's server does
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_open(host: str, port: int) -> bool:
    """True if something accepts connections on *host*:*port*."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01, message: str = "") -> None:
    """Poll *condition* until it is true; TimeoutError after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


@dataclass
class Instance:
    """One app instance: a server process with its own machine id and mount folder."""

    id: str
    region: str
    host: str
    port: int
    litefs_dir: str
    db_path: str
    log_path: str
    process: subprocess.Popen[bytes] | None = None
    _pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class FrontedCluster(StartsAndCloses):
    """What every dev cluster does the same way: app instances behind a Fly-like front, as a context manager.

    A subclass sets the attributes below in its ``__init__``, starts the front
    with :meth:`_start_front` once its instances serve, and closes it itself.
    """

    instances: dict[str, Instance]
    health_path: str | None
    health_interval: float
    _front: FrontProxy | None
    _front_port: int

    @property
    def front(self) -> FrontProxy:
        """The front proxy (its ``replays`` log, ``served`` counts...)."""
        if self._front is None:
            raise RuntimeError("the cluster has no front proxy: it is not running (or, on real LiteFS, has no app)")
        return self._front

    @property
    def front_url(self) -> str:
        return self.front.url

    def url(self, instance_id: str) -> str:
        """The instance's app server (bypassing the front proxy, and LiteFS's proxy if there is one)."""
        return self.instances[instance_id].url

    def _start_front(
        self,
        targets: Mapping[str, tuple[str, int]],
        regions: Mapping[str, str],
        default_region: str,
        host: str = "127.0.0.1",
    ) -> None:
        """Start the front proxy on *targets* (instance id -> address), with the cluster's health check."""
        self._front = FrontProxy(
            targets,
            regions=regions,
            default_region=default_region,
            host=host,
            port=self._front_port,
            health_path=self.health_path,
            health_interval=self.health_interval,
        ).start()

    def _front_status(self, *, replays: bool) -> list[str]:
        """The status lines of the front: how many replays so far (if *replays*), which instances are in rotation."""
        lines = []
        if replays:
            lines.append(f"  replays so far: {self._front.replay_count if self._front is not None else 0}")
        if self._front is not None and (rotation := self._front.rotation_summary()) is not None:
            lines.append(f"  {rotation}")
        return lines


class Cluster(FrontedCluster):
    """N instances of *app* behind a :class:`~litefs_route_devcluster.proxy.FrontProxy`, with replication.

    *app* is ``module:attr`` of a WSGI or ASGI app, importable from *app_dir*
    (default: the current directory). Each instance runs in its own process
    group with ``FLY_MACHINE_ID``, ``FLY_REGION``, ``PRIMARY_REGION``,
    ``FLY_APP_NAME``, ``LITEFS_DIR`` (its own folder), ``DATABASE_FILENAME``
    and ``DATABASE_PATH`` set, plus *env*.

    *setup*: a shell command run once on the primary, with its environment,
    before the app servers start (create the app's schema there); its output
    goes to ``logs/setup.log``. *health_path*: the front's health check of
    each instance (see :class:`~litefs_route_devcluster.proxy.FrontProxy`).

    ::

        with Cluster("myapp:app", instances=3, lag=0.5) as cluster:
            httpx.post(cluster.front_url + "/items", ...)
            cluster.wait_replicated()
            cluster.promote("node2")
    """

    def __init__(
        self,
        app: str = DEFAULT_APP,
        *,
        instances: int | Sequence[str] = 3,
        lag: float = 0.0,
        database: str = "app.db",
        base_dir: str | os.PathLike[str] | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        region: str = "local",
        regions: Mapping[str, str] | None = None,
        primary: str | None = None,
        interface: Interface = "auto",
        env: Mapping[str, str] | None = None,
        app_dir: str | os.PathLike[str] | None = None,
        handover: float = 0.1,
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        poll_interval: float = 0.002,
        echo: Callable[[str, str], None] | None = None,
        health_path: str | None = None,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        setup: str | None = None,
    ) -> None:
        self.app = app
        self.setup = setup
        self.health_path = health_path
        self.health_interval = health_interval
        self.ids = resolve_ids(instances)
        self.database = database
        self.host = host
        self.region = region
        self.interface: Interface = interface
        self.env = dict(env or {})
        self.app_dir = os.path.abspath(os.fspath(app_dir) if app_dir is not None else os.getcwd())
        self.handover = handover
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self.echo = echo
        self.runner = AppRunner(
            app,
            interface=interface,
            app_dir=self.app_dir,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
            echo=echo,
        )
        self._initial_lag = lag
        self._initial_primary = primary or self.ids[0]
        if self._initial_primary not in self.ids:
            raise ValueError(f"primary {primary!r} is not one of {self.ids}")
        self._front_port = port
        self._regions = {i: (regions or {}).get(i, region) for i in self.ids}
        self._owns_base = base_dir is None
        self.base_dir = os.path.abspath(os.fspath(base_dir)) if base_dir is not None else ""
        self._replicator: Replicator | None = None
        self._front: FrontProxy | None = None
        self._reaper: FolderReaper | None = None
        self.instances: dict[str, Instance] = {}
        self._lock = threading.RLock()
        self._started = False

    # -- life cycle --------------------------------------------------------

    def start(self) -> Cluster:
        """Create the folders, start replication, the instances and the front proxy."""
        if self._started:
            return self
        self._started = True
        try:
            if self._owns_base:
                self.base_dir = tempfile.mkdtemp(prefix="litefs-devcluster-")
                self._reaper = FolderReaper(self.base_dir)
            os.makedirs(os.path.join(self.base_dir, "logs"), exist_ok=True)
            for instance_id in self.ids:
                folder = os.path.join(self.base_dir, instance_id)
                self.instances[instance_id] = Instance(
                    id=instance_id,
                    region=self._regions[instance_id],
                    host=self.host,
                    port=free_port(self.host),
                    litefs_dir=folder,
                    db_path=os.path.join(folder, self.database),
                    log_path=os.path.join(self.base_dir, "logs", f"{instance_id}.log"),
                )
            self._replicator = Replicator(
                {i.id: i.litefs_dir for i in self.instances.values()},
                self._initial_primary,
                database=self.database,
                lag=self._initial_lag,
                poll_interval=self.poll_interval,
            ).start()
            if self.setup:
                primary = self.instances[self._initial_primary]
                self.runner.run_setup(self.setup, primary, self._environment(primary), self._setup_log)
                self.wait_replicated(self.startup_timeout)
            for instance in self.instances.values():
                self._spawn(instance)
            for instance in self.instances.values():
                self._wait_ready(instance)
            self._start_front(
                {i.id: (i.host, i.port) for i in self.instances.values()}, self._regions, self.region, self.host
            )
        except BaseException:
            self.close()
            raise
        logger.info("dev cluster up: front %s, primary %s", self.front_url, self.primary)
        return self

    def close(self) -> None:
        """Stop every process (whole process groups), the proxy and replication. Idempotent."""
        if self._front is not None:
            self._front.close()
        for instance in self.instances.values():
            self._terminate(instance)
            release_port(instance.port)
        if self._replicator is not None:
            self._replicator.close()
            self._replicator = None
        if self._reaper is not None:  # it removes the folder we made (never through a live mount)
            self._reaper.close()
            self._reaper = None

    stop = close

    # -- accessors -----------------------------------------------------------

    @property
    def _setup_log(self) -> str:
        return os.path.join(self.base_dir, "logs", "setup.log")

    @property
    def replicator(self) -> Replicator:
        if self._replicator is None:
            raise RuntimeError("the cluster is not running")
        return self._replicator

    @property
    def primary(self) -> str | None:
        """The primary's id; None during a failover's no-primary period."""
        return self.replicator.primary

    @property
    def replicas(self) -> list[str]:
        primary = self.primary
        return [i for i in self.ids if i != primary]

    @property
    def lag(self) -> float:
        return self.replicator.lag

    def db_path(self, instance_id: str, database: str | None = None) -> str:
        """The instance's database file (the imitation replicates one: *database* may only name it)."""
        return os.path.join(self.instances[instance_id].litefs_dir, self._only_database(database))

    def positions(self, database: str | None = None) -> dict[str, int]:
        """Instance id -> the TXID its database copy holds."""
        self._only_database(database)
        return self.replicator.positions()

    def _only_database(self, database: str | None) -> str:
        if database is not None and database != self.database:
            raise ValueError(f"the imitation replicates one database, {self.database!r}, not {database!r}")
        return self.database

    def pids(self) -> dict[str, int]:
        """Instance id -> process id, for running instances."""
        return {i.id: i.pid for i in self.instances.values() if i.running and i.pid is not None}

    def ports(self) -> list[int]:
        """Every port the cluster listens on (front first)."""
        ports = [self.front.address[1]] if self._front is not None else []
        return ports + [i.port for i in self.instances.values()]

    # -- control -------------------------------------------------------------

    def promote(self, instance_id: str, *, timeout: float = 15.0) -> None:
        """Hand the primary to *instance_id* gracefully (after the ``handover`` period); wait until it is primary."""
        self.fail_over(instance_id)
        self.wait_primary(instance_id, timeout=timeout)

    def fail_over(self, instance_id: str, *, handover: float | None = None, graceful: bool = True) -> None:
        """The imitation's failover, every way: see :meth:`Replicator.promote` (``graceful=False``: a crash)."""
        if instance_id not in self.instances:
            raise KeyError(f"no instance {instance_id!r}; instances: {self.ids}")
        self.replicator.promote(
            instance_id, handover=self.handover if handover is None else handover, graceful=graceful
        )

    def wait_primary(self, expected: str | None = None, timeout: float = 30.0) -> str:
        """Wait until an instance is primary (*expected*, if given); its id."""
        found: list[str] = []

        def settled() -> bool:
            primary = self.primary
            found[:] = [primary] if primary is not None else []
            return primary is not None and expected in (None, primary)

        wait_for(settled, timeout=timeout, message=f"no primary {expected or ''} in {timeout} s")
        return found[0]

    def set_lag(self, seconds: float) -> None:
        self.replicator.set_lag(seconds)

    def wait_replicated(self, timeout: float = 10.0, *, database: str | None = None) -> dict[str, int]:
        """Wait until every running replica holds the primary's last transaction."""
        self._only_database(database)
        return self.replicator.wait_replicated(timeout)

    def kill_node(self, instance_id: str) -> None:
        """SIGKILL the instance, as a crash: a primary's writes not yet replicated are lost.

        The imitation has no lease to expire: the first running instance
        after it takes over at once (LiteFS: after the lease's TTL).
        """
        with self._lock:
            instance = self.instances[instance_id]
            if instance.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(instance.process.pid, signal.SIGKILL)
            self._terminate(instance)  # reaps it
            self.replicator.set_online(instance_id, False)
            survivors = [i for i in self.ids if i != instance_id and self.instances[i].running]
        if self.primary == instance_id and survivors:
            self.fail_over(survivors[0], graceful=False)

    def stop_node(self, instance_id: str) -> None:
        """Stop an instance's process group; its folder stops receiving changes until restarted.

        A primary first hands over gracefully to the first running instance
        after it (as LiteFS's primary releases its lease on SIGTERM).
        """
        if self.primary == instance_id:
            survivors = [i for i in self.ids if i != instance_id and self.instances[i].running]
            if survivors:
                self.fail_over(survivors[0])
        with self._lock:
            instance = self.instances[instance_id]
            self._terminate(instance)
            self.replicator.set_online(instance_id, False)

    def start_node(self, instance_id: str) -> None:
        """Start a stopped instance; its folder catches up first, then its server starts."""
        with self._lock:
            instance = self.instances[instance_id]
            if instance.running:
                return
            self.replicator.set_online(instance_id, True)
            self._spawn(instance)
            try:
                self._wait_ready(instance)
            except RuntimeError:
                # A process that does not reserve its ports may have taken it meanwhile: a fresh one, once.
                self._terminate(instance)
                release_port(instance.port)
                instance.port = free_port(self.host)
                self._spawn(instance)
                self._wait_ready(instance)
                self.front.set_instances({i.id: (i.host, i.port) for i in self.instances.values()})

    # The names this class had before the shared interface (DevCluster) named them *_node.
    stop_instance = stop_node
    start_instance = start_node

    def status(self) -> str:
        """A human-readable summary."""
        positions = self.positions()
        lines = [f"front {self.front_url}  primary {self.primary or '(none)'}  lag {self.lag:g} s"]
        for instance in self.instances.values():
            role = "primary" if instance.id == self.primary else "replica"
            state = "running" if instance.running else "stopped"
            lines.append(
                f"  {instance.id:<10} {role:<8} {state:<8} {instance.url}  TXID {positions.get(instance.id, 0)}"
                f"  {instance.litefs_dir}"
            )
        lines += self._front_status(replays=True)
        return "\n".join(lines)

    # -- processes -----------------------------------------------------------

    def _environment(self, instance: Instance) -> dict[str, str]:
        return {
            "FLY_MACHINE_ID": instance.id,
            "FLY_ALLOC_ID": instance.id,
            "FLY_REGION": instance.region,
            "PRIMARY_REGION": self._regions[self._initial_primary],
            "FLY_APP_NAME": "devcluster",
            "LITEFS_DIR": instance.litefs_dir,
            "DATABASE_FILENAME": self.database,
            "DATABASE_PATH": instance.db_path,
            "LITEFS_API_URL": "off",  # the imitation has no HTTP API
            **self.env,
        }

    def _spawn(self, instance: Instance) -> None:
        self.runner.spawn(instance, self._environment(instance))

    def _wait_ready(self, instance: Instance) -> None:
        self.runner.wait_ready(instance)

    def _terminate(self, instance: Instance) -> None:
        self.runner.terminate(instance)


class AppRunner:
    """Starts, watches and stops the app server of each instance, one process group each.

    Shared by the imitation :class:`Cluster` and the real-LiteFS cluster
    (:class:`~litefs_route_devcluster.litefs.LiteFSCluster`): the app side of
    an instance is the same whatever provides its mount.
    """

    def __init__(
        self,
        app: str,
        *,
        interface: Interface = "auto",
        app_dir: str,
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        echo: Callable[[str, str], None] | None = None,
        wsgi_server: WSGIServer = "auto",
    ) -> None:
        self.app = app
        self.interface: Interface = interface
        self.wsgi_server: WSGIServer = wsgi_server
        self.app_dir = app_dir
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.echo = echo

    def _environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """The process environment, the app directory on ``PYTHONPATH``, plus *env*."""
        environment = dict(os.environ)
        python_path = [self.app_dir, *([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else [])]
        environment.update({"PYTHONPATH": os.pathsep.join(python_path), "PYTHONUNBUFFERED": "1"})
        environment.update(env)
        return environment

    def run_setup(self, command: str, instance: Instance, env: Mapping[str, str], log_path: str) -> None:
        """Run the shell *command* once, in the app directory with *instance*'s environment *env*; wait for it.

        Its output goes to *log_path* (and ``echo``). RuntimeError, with the
        log's tail, if it exits non-zero.
        """
        logger.info("setup on %s: %s", instance.id, command)
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],  # the user's own command line, as they would type it
            cwd=self.app_dir,
            env=self._environment(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert process.stdout is not None
        try:
            pump_output(f"setup:{instance.id}", process.stdout, log_path, self.echo)
            code = process.wait()
        finally:
            if process.poll() is None:  # interrupted (^C): not left running
                stop_process_group(process, self.stop_timeout, "setup")
        if code != 0:
            raise RuntimeError(f"the setup command exited with {code}; log {log_path}:\n{log_tail(log_path)}")

    def spawn(self, instance: Instance, env: Mapping[str, str]) -> None:
        """Start *instance*'s server with the process environment plus *env*."""
        environment = self._environment(env)
        command = [
            sys.executable,
            "-m",
            "litefs_route_devcluster._serve",
            self.app,
            "--host",
            instance.host,
            "--port",
            str(instance.port),
            "--interface",
            self.interface,
            "--server",
            self.wsgi_server,
        ]
        logger.info("starting %s on %s", instance.id, instance.url)
        process = subprocess.Popen(
            command,
            cwd=self.app_dir,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        instance.process = process
        assert process.stdout is not None
        instance._pump = threading.Thread(
            target=pump_output, args=(instance.id, process.stdout, instance.log_path, self.echo), daemon=True
        )
        instance._pump.start()

    def wait_ready(self, instance: Instance) -> None:
        """Wait until *instance* listens; RuntimeError (with its log's tail) if it exits or takes too long."""
        deadline = time.monotonic() + self.startup_timeout
        process = instance.process
        assert process is not None
        while not port_open(instance.host, instance.port):
            if process.poll() is not None:
                if instance._pump is not None:
                    instance._pump.join(2)
                raise RuntimeError(
                    f"instance {instance.id} exited with {process.returncode} before listening; "
                    f"log {instance.log_path}:\n{log_tail(instance.log_path)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"instance {instance.id} did not listen within {self.startup_timeout} s")
            time.sleep(0.02)

    def terminate(self, instance: Instance) -> None:
        """Stop *instance*'s process group (SIGTERM, then SIGKILL after ``stop_timeout``). Idempotent."""
        process = instance.process
        if process is None:
            return
        logger.info("stopping %s (pid %d)", instance.id, process.pid)
        stop_process_group(process, self.stop_timeout, instance.id)
        if instance._pump is not None:
            instance._pump.join(5)
            instance._pump = None
        instance.process = None


def stop_process_group(process: subprocess.Popen[bytes], timeout: float, name: str) -> None:
    """SIGTERM *process*'s group, SIGKILL what is left after *timeout* seconds, reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning("%s did not stop within %s s; killing it", name, timeout)
    # Whatever is left of the group (children of the server) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def pump_output(name: str, stream: IO[bytes], log_path: str, echo: Callable[[str, str], None] | None) -> None:
    """Copy a child's output to *log_path*, line by line, and to *echo* (with *name*) if given."""
    with stream, open(log_path, "ab") as log:
        for line in iter(stream.readline, b""):
            log.write(line)
            log.flush()
            if echo is not None:
                echo(name, line.decode("utf-8", "replace").rstrip("\n"))


def log_tail(path: str, lines: int = 30) -> str:
    """The last *lines* lines of the log at *path* ("" if unreadable)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
