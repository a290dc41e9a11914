"""A cluster of real LiteFS nodes on one machine, for tests and development.

Where :class:`~litefs_route_devcluster.Cluster` imitates LiteFS with plain
folders, :class:`LiteFSCluster` runs LiteFS itself: N ``litefs mount``
processes on 127.0.0.1, each with its own FUSE mount, data directory, HTTP
API port and ``lease.hostname``, and (when given an app) an app server per
node with ``LITEFS_DIR`` pointing at that node's mount and ``FLY_MACHINE_ID``
at its lease hostname, behind the Fly-like :class:`FrontProxy`.

Leases:

``lease="static"``
    A fixed primary (the first id, or *primary*). The replicas reach it
    through a :class:`TcpRelay` each, so a test can hold one replica's
    replication back (:meth:`LiteFSCluster.pause_replication`) without
    freezing any FUSE mount: LiteFS has no lag injection of its own.
``lease="consul"``
    Every node is a candidate, leased through a
    :class:`~litefs_route_devcluster.consul.ConsulStandIn`, so the primary
    really moves: :meth:`~LiteFSCluster.kill_node` (the lease expires after
    its TTL), :meth:`~LiteFSCluster.promote` (LiteFS's own handoff, as
    ``POST /promote``), :meth:`~LiteFSCluster.stop_node` and
    :meth:`~LiteFSCluster.start_node` (a node that restarts).

LiteFS needs Linux, ``/dev/fuse``, ``fusermount3`` (Debian's ``fuse3``) and
the ``litefs`` binary (``LITEFS_BIN``, ``PATH``, or where
``.ci/install-litefs`` puts it); :func:`litefs_unavailable` says what is
missing. Clean-up stops every process and unmounts every mount, also when a
test fails::

    with LiteFSCluster("myapp:app", instances=3, lease="consul") as cluster:
        httpx.post(cluster.front_url + "/items", ...)
        cluster.kill_node(cluster.primary)
        cluster.wait_primary()
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from litefs_route import read_position

from .cluster import (
    AppRunner,
    FrontedCluster,
    Instance,
    Interface,
    WSGIServer,
    free_port,
    log_tail,
    pump_output,
    release_port,
    stop_process_group,
    wait_for,
)
from .consul import ConsulStandIn
from .proxy import DEFAULT_HEALTH_INTERVAL, FrontProxy
from .reaper import FolderReaper, is_mounted, mounts_under, unmount
from .replication import resolve_ids

__all__ = [
    "LITEFS_VERSION",
    "LiteFSCluster",
    "LiteFSNode",
    "TcpRelay",
    "find_litefs",
    "litefs_unavailable",
]

logger = logging.getLogger("litefs_route_devcluster")

#: The LiteFS release the project is tested against.
LITEFS_VERSION = "v0.5.14"

#: Where ``.ci/install-litefs`` installs the binary when ``LITEFS_BIN`` is unset.
DEFAULT_INSTALL_DIR = os.path.join(os.path.expanduser("~"), ".cache", "litefs-route", "bin")

Lease = Literal["static", "consul"]


def find_litefs() -> str | None:
    """The ``litefs`` binary: ``$LITEFS_BIN``, else ``litefs`` on ``PATH``, else the install dir, else Go's bin."""
    explicit = os.environ.get("LITEFS_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    candidates = [
        shutil.which("litefs"),
        os.path.join(DEFAULT_INSTALL_DIR, "litefs"),
        os.path.join(os.path.expanduser("~"), "go", "bin", "litefs"),
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def litefs_unavailable() -> str | None:
    """Why real LiteFS cannot run here (one line), or None if it can."""
    if not sys.platform.startswith("linux"):
        return f"real LiteFS needs Linux with FUSE; this is {sys.platform}"
    if not os.path.exists("/dev/fuse"):
        return "real LiteFS needs /dev/fuse, which this machine lacks"
    if shutil.which("fusermount3") is None:
        return "real LiteFS needs fusermount3 (Debian: apt-get install fuse3)"
    if find_litefs() is None:
        return (
            f"no litefs binary: build LiteFS {LITEFS_VERSION} with "
            f"`go install github.com/superfly/litefs/cmd/litefs@{LITEFS_VERSION}` (a clone: bash .ci/install-litefs), "
            "or set LITEFS_BIN"
        )
    return None


class TcpRelay:
    """A TCP relay from a local port to *target* that a test can pause and resume.

    Paused, it stops moving bytes in both directions (connections stay open,
    so the peers see a stalled network, not a closed one); resumed, it moves
    what was waiting. New connections are accepted while paused and wait too.

    *narrow*: the relay's connections to *target* take as few bytes as TCP
    allows before a pause stalls the sender (the smallest receive buffer and
    segments). The sender's kernel sizes its send buffer by the segment
    size: on loopback (64 KiB segments) it grows to megabytes, which a
    test would have to fill before the sender notices the stall.
    """

    def __init__(
        self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0, *, narrow: bool = False
    ) -> None:
        self.target = target
        self.narrow = narrow
        self._listener = socket.create_server((host, port))
        self._running = threading.Event()
        self._running.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._accepter = threading.Thread(target=self._accept, name="litefs-relay", daemon=True)
        self._accepter.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        return "http://{}:{}".format(*self.address)

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def close(self) -> None:
        """Close the listener and every relayed connection. Idempotent."""
        self._closed = True
        self._running.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._accepter.join(5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET, socket.SOCK_STREAM)
            try:
                if self.narrow:  # before connect(): the window and segment size are announced in the handshake
                    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 88)
                upstream.settimeout(5)
                upstream.connect(self.target)
            except OSError:
                upstream.close()
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._closed:
                ready, _, _ = select.select([a, b], [], [], 0.2)
                for sock in ready:
                    # Hold the bytes while paused: the kernel buffers fill and
                    # the sender stalls, as over a congested network.
                    self._running.wait()
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()


@dataclass
class LiteFSNode:
    """One LiteFS node: its ``litefs mount`` process, mount, data directory and API port."""

    id: str
    mount_dir: str
    data_dir: str
    config_path: str
    log_path: str
    http_port: int
    candidate: bool
    #: The port of LiteFS's own HTTP proxy, when the cluster enables it.
    proxy_port: int | None = None
    #: The relay this node replicates through (static lease, replicas only).
    relay: TcpRelay | None = None
    process: subprocess.Popen[bytes] | None = None
    _pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LiteFSCluster(FrontedCluster):
    """N real LiteFS nodes, optionally each with an app server, behind a :class:`FrontProxy`.

    *app* is ``module:attr`` of a WSGI or ASGI app importable from *app_dir*
    (default: the current directory), or None for LiteFS alone. Each app
    server gets ``LITEFS_DIR`` (its node's mount), ``FLY_MACHINE_ID`` (its
    node's lease hostname), ``FLY_REGION``, ``FLY_APP_NAME``,
    ``DATABASE_FILENAME`` and ``DATABASE_PATH``, plus *env*.

    *litefs_proxy* puts LiteFS's own HTTP proxy (its ``proxy:`` section, for
    *database*) between the front proxy and each app server. *consul_ttl*
    and *consul_lock_delay* set the Consul lease's timing: a killed primary's
    lease expires after the TTL, and only then can another node take it.
    *wsgi_server* ``"gunicorn"`` serves a WSGI app with gunicorn (options in
    ``$GUNICORN_CMD_ARGS``, which *env* can set) instead of Werkzeug.
    *setup*: a shell command run once on the primary node, with its app's
    environment, before the app servers start (create the app's schema
    there); its output goes to ``logs/setup.log``. *health_path*: the front's
    health check of each instance (see :class:`FrontProxy`).
    """

    def __init__(
        self,
        app: str | None = None,
        *,
        instances: int | Sequence[str] = 3,
        lease: Lease = "static",
        primary: str | None = None,
        database: str = "app.db",
        base_dir: str | os.PathLike[str] | None = None,
        port: int = 0,
        region: str = "local",
        interface: Interface = "auto",
        env: Mapping[str, str] | None = None,
        app_dir: str | os.PathLike[str] | None = None,
        litefs_proxy: bool = False,
        proxy_passthrough: Sequence[str] = (),
        consul_ttl: float = 3.0,
        consul_lock_delay: float = 0.5,
        reconnect_delay: float = 0.2,
        demote_delay: float = 2.0,
        litefs_bin: str | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        echo: Callable[[str, str], None] | None = None,
        wsgi_server: WSGIServer = "auto",
        health_path: str | None = None,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        setup: str | None = None,
    ) -> None:
        self.app = app
        self.setup = setup
        self.health_path = health_path
        self.health_interval = health_interval
        self.ids = resolve_ids(instances)
        self.lease: Lease = lease
        self.database = database
        self.region = region
        self.env = dict(env or {})
        self.litefs_proxy = litefs_proxy
        self.proxy_passthrough = list(proxy_passthrough)
        self.consul_ttl = consul_ttl
        self.consul_lock_delay = consul_lock_delay
        self.reconnect_delay = reconnect_delay
        self.demote_delay = demote_delay
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.echo = echo
        self._initial_primary = primary or self.ids[0]
        if self._initial_primary not in self.ids:
            raise ValueError(f"primary {primary!r} is not one of {self.ids}")
        if lease not in ("static", "consul"):
            raise ValueError(f"lease must be 'static' or 'consul', not {lease!r}")
        if litefs_proxy and not app:
            raise ValueError("litefs_proxy=True needs an app: LiteFS's proxy forwards to each node's app server")
        if setup and not app:
            raise ValueError("setup needs an app: it runs with the app's environment, before its servers start")
        self.litefs_bin = litefs_bin or find_litefs()
        self._front_port = port
        self._owns_base = base_dir is None
        self.base_dir = os.path.abspath(os.fspath(base_dir)) if base_dir is not None else ""
        app_dir_path = os.path.abspath(os.fspath(app_dir) if app_dir is not None else os.getcwd())
        self.runner = AppRunner(
            app or "",
            interface=interface,
            app_dir=app_dir_path,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
            echo=echo,
            wsgi_server=wsgi_server,
        )
        self.nodes: dict[str, LiteFSNode] = {}
        #: The app servers, by node id (empty without *app*).
        self.instances: dict[str, Instance] = {}
        self.consul: ConsulStandIn | None = None
        self._front: FrontProxy | None = None
        self._reaper: FolderReaper | None = None
        self._started = False
        self._lock = threading.RLock()

    # -- life cycle --------------------------------------------------------

    def start(self) -> LiteFSCluster:
        """Start Consul (if leased by it), the LiteFS nodes (primary first), the app servers and the front."""
        if self._started:
            return self
        reason = litefs_unavailable() if self.litefs_bin is None else None
        if reason is not None or self.litefs_bin is None:
            raise RuntimeError(reason or "no litefs binary")
        self._started = True
        try:
            if self._owns_base:
                self.base_dir = tempfile.mkdtemp(prefix="litefs-cluster-")
                self._reaper = FolderReaper(self.base_dir)
            os.makedirs(os.path.join(self.base_dir, "logs"), exist_ok=True)
            if self.lease == "consul":
                self.consul = ConsulStandIn().start()
            for node_id in self.ids:
                self.nodes[node_id] = self._make_node(node_id)
                if self.app:
                    self.instances[node_id] = self._make_instance(self.nodes[node_id])
            first = self._initial_primary
            self._launch(self.nodes[first])
            self.wait_primary(first, timeout=self.startup_timeout)
            for node in self.nodes.values():
                if node.id != first:
                    self._launch(node)
            for node_id in self.ids:
                wait_for(
                    lambda n=node_id: self._knows_primary(n),  # type: ignore[misc]
                    timeout=self.startup_timeout,
                    message=f"LiteFS node {node_id} found no primary within {self.startup_timeout} s; "
                    f"log {self.nodes[node_id].log_path}:\n{log_tail(self.nodes[node_id].log_path)}",
                )
            if self.app:
                self._start_apps()
        except BaseException:
            self.close()
            raise
        logger.info("LiteFS cluster up: %s, primary %s", ", ".join(self.ids), self.primary)
        return self

    def close(self) -> None:
        """Stop the front, the app servers, every LiteFS node (unmounting it) and Consul. Idempotent."""
        if self._front is not None:
            self._front.close()
            self._front = None
        for instance in self.instances.values():
            self.runner.terminate(instance)
        # Relays first: no replica is left mid-stream to a primary that is going away.
        for node in self.nodes.values():
            if node.relay is not None:
                node.relay.close()
                node.relay = None
        # In parallel: a node that ignores SIGTERM (LiteFS handles it only once
        # it has mounted) costs one stop_timeout in all, not one per node.
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            list(pool.map(self._stop_litefs, self.nodes.values()))
        for port in [i.port for i in self.instances.values()] + [
            p for n in self.nodes.values() for p in (n.http_port, n.proxy_port) if p is not None
        ]:
            release_port(port)
        if self.consul is not None:
            self.consul.close()
            self.consul = None
        if self._reaper is not None:  # it removes the folder we made (never through a live mount)
            self._reaper.close()
            self._reaper = None

    # -- accessors -----------------------------------------------------------

    def proxy_url(self, node_id: str) -> str:
        """The URL of the node's LiteFS proxy (with ``litefs_proxy=True``)."""
        port = self.nodes[node_id].proxy_port
        if port is None:
            raise RuntimeError("LiteFS's proxy is off (litefs_proxy=False)")
        return f"http://127.0.0.1:{port}"

    def mount_dir(self, node_id: str) -> str:
        return self.nodes[node_id].mount_dir

    def db_path(self, instance_id: str, database: str | None = None) -> str:
        return os.path.join(self.nodes[instance_id].mount_dir, database or self.database)

    def read(self, node_id: str, name: str) -> bytes | None:
        """The content of file *name* in the node's mount; None if absent (ENOENT)."""
        try:
            with open(os.path.join(self.nodes[node_id].mount_dir, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def info(self, node_id: str, timeout: float = 2.0) -> dict[str, Any]:
        """The node's ``GET /info`` (raises OSError if its API does not answer)."""
        with urllib.request.urlopen(self.nodes[node_id].api_url + "/info", timeout=timeout) as response:  # noqa: S310
            payload: dict[str, Any] = json.load(response)
        return payload

    @property
    def running(self) -> list[str]:
        """Ids of the nodes whose LiteFS process is running."""
        return [n.id for n in self.nodes.values() if n.running]

    @property
    def primary(self) -> str | None:
        """The id of the node that says it is primary (``/info``), None if none does."""
        for node_id in self.running:
            with contextlib.suppress(OSError, ValueError):
                if self.info(node_id)["isPrimary"]:
                    return node_id
        return None

    @property
    def replicas(self) -> list[str]:
        primary = self.primary
        return [i for i in self.running if i != primary]

    def position(self, node_id: str, database: str | None = None) -> int | None:
        """The TXID the node's ``<db>-pos`` holds; None before the database exists or while its LiteFS is down."""
        if not self.nodes[node_id].running:
            return None
        try:
            position = read_position(self.nodes[node_id].mount_dir, database or self.database)
        except OSError:  # ENOTCONN: the mount died with its process
            return None
        return position.txid if position is not None else None

    def positions(self, database: str | None = None) -> dict[str, int]:
        """Running node id -> the TXID of its copy of the database (0 before it exists)."""
        return {i: self.position(i, database) or 0 for i in self.running}

    def pids(self) -> dict[str, int]:
        """Node id -> the pid of its ``litefs`` process, for running nodes."""
        return {n.id: n.process.pid for n in self.nodes.values() if n.process is not None and n.running}

    # -- waiting -------------------------------------------------------------

    def wait_primary(self, expected: str | None = None, timeout: float = 30.0) -> str:
        """Wait until a running node is primary (*expected*, if given) and every running node names it."""
        found: list[str] = []

        def settled() -> bool:
            primary = self.primary
            if primary is None or (expected is not None and primary != expected):
                return False
            found[:] = [primary]
            return all(self._knows_primary(i, primary) for i in self.running)

        wait_for(settled, timeout=timeout, interval=0.05, message=f"no agreed primary {expected or ''} in {timeout} s")
        return found[0]

    def wait_replicated(self, timeout: float = 10.0, *, database: str | None = None) -> dict[str, int]:
        """Wait until every running replica holds the primary's last transaction of *database*; the positions."""
        primary = self.wait_primary(timeout=timeout)

        def caught_up() -> bool:
            target = self.position(primary, database)
            return all(self.position(i, database) == target for i in self.running)

        wait_for(caught_up, timeout=timeout, message=f"replicas did not catch up with {primary} in {timeout} s")
        return self.positions(database)

    # -- control -------------------------------------------------------------

    def promote(self, instance_id: str, *, timeout: float = 15.0) -> None:
        """Hand the lease to *instance_id* gracefully (LiteFS's ``POST /promote``); wait until it is primary."""
        if self.lease != "consul":
            raise RuntimeError("a static lease cannot move; use lease='consul'")
        deadline = time.monotonic() + timeout
        while True:
            request = urllib.request.Request(self.nodes[instance_id].api_url + "/promote", method="POST")  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                    response.read()
                break
            except urllib.error.HTTPError as exc:
                # 500 while the node is (re)connecting to the primary ("no primary is
                # currently available", "target node is not currently connected"): retry.
                exc.close()
                if exc.code != 500 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.wait_primary(instance_id, timeout=max(5.0, deadline - time.monotonic()))

    def kill_node(self, instance_id: str) -> None:
        """SIGKILL the node's LiteFS, as a crash: its lease is not released and its mount goes dead.

        The app server keeps running on the dead mount (reads fail with
        ENOTCONN) until :meth:`start_node` remounts it.
        """
        with self._lock:
            node = self.nodes[instance_id]
            if node.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait()
                self._join_pump(node)
                node.process = None

    def stop_node(self, instance_id: str) -> None:
        """Stop the node's LiteFS gracefully (SIGTERM: a primary releases its lease, the mount is removed)."""
        with self._lock:
            self._stop_litefs(self.nodes[instance_id])

    def start_node(self, instance_id: str) -> None:
        """(Re)start the node's LiteFS on its data directory; wait until it knows a primary."""
        with self._lock:
            node = self.nodes[instance_id]
            if node.running:
                return
            self._unmount(node)
            self._launch(node)
        wait_for(
            lambda: self._knows_primary(instance_id),
            timeout=self.startup_timeout,
            message=f"restarted node {instance_id} found no primary; log {node.log_path}:\n{log_tail(node.log_path)}",
        )

    def kill_app(self, node_id: str) -> None:
        """SIGKILL the node's app server (its whole process group), as a crash; its LiteFS keeps running."""
        with self._lock:
            instance = self.instances[node_id]
            if instance.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(instance.process.pid, signal.SIGKILL)
                self.runner.terminate(instance)  # reaps it

    def start_app(self, node_id: str) -> None:
        """(Re)start the node's app server; wait until it listens (on a new port if its old one was taken)."""
        with self._lock:
            instance = self.instances[node_id]
            if instance.running:
                return
            self.runner.spawn(instance, self._app_environment(instance))
            try:
                self.runner.wait_ready(instance)
            except RuntimeError:
                # Most likely another process took the port meanwhile: a fresh one, once.
                self.runner.terminate(instance)
                instance.port = free_port()
                self.runner.spawn(instance, self._app_environment(instance))
                self.runner.wait_ready(instance)
                if self._front is not None and self.nodes[node_id].proxy_port is None:
                    self._front.set_instances({i: ("127.0.0.1", self.instances[i].port) for i in self.instances})

    def pause_replication(self, node_id: str) -> None:
        """Hold back replication to replica *node_id* (static lease): its relay to the primary stalls."""
        self._relay(node_id).pause()

    def resume_replication(self, node_id: str) -> None:
        self._relay(node_id).resume()

    def status(self) -> str:
        """A human-readable summary."""
        primary = self.primary
        lines = [f"LiteFS {self.lease} lease, primary {primary or '(none)'}"]
        for node in self.nodes.values():
            role = "primary" if node.id == primary else "replica"
            state = "running" if node.running else "stopped"
            app = f"  app {self.instances[node.id].url}" if node.id in self.instances else ""
            lines.append(
                f"  {node.id:<10} {role:<8} {state:<8} api {node.api_url}{app}  TXID {self.position(node.id) or 0}"
                f"  {node.mount_dir}"
            )
        lines += self._front_status(replays=False)
        return "\n".join(lines)

    # -- nodes ---------------------------------------------------------------

    def _make_node(self, node_id: str) -> LiteFSNode:
        root = os.path.join(self.base_dir, node_id)
        node = LiteFSNode(
            id=node_id,
            mount_dir=os.path.join(root, "mnt"),
            data_dir=os.path.join(root, "data"),
            config_path=os.path.join(root, "litefs.yml"),
            log_path=os.path.join(self.base_dir, "logs", f"{node_id}.litefs.log"),
            http_port=free_port(),
            candidate=self.lease == "consul" or node_id == self._initial_primary,
            proxy_port=free_port() if self.litefs_proxy else None,
        )
        os.makedirs(node.mount_dir, exist_ok=True)
        os.makedirs(node.data_dir, exist_ok=True)
        return node

    def _config(self, node: LiteFSNode) -> dict[str, Any]:
        primary_node = self.nodes[self._initial_primary]
        if self.lease == "static" and node.id != primary_node.id:
            # Replicas reach the static primary through their own relay.
            if node.relay is None:
                node.relay = TcpRelay(("127.0.0.1", primary_node.http_port))
            advertise_url = node.relay.url
        else:
            advertise_url = node.api_url
        lease: dict[str, Any] = {
            "type": self.lease,
            "hostname": primary_node.id if self.lease == "static" else node.id,
            "advertise-url": advertise_url,
            "candidate": node.candidate,
            "reconnect-delay": f"{self.reconnect_delay}s",
            "demote-delay": f"{self.demote_delay}s",
        }
        if self.lease == "consul":
            assert self.consul is not None
            lease["consul"] = {
                "url": self.consul.url,
                "key": "litefs/primary",
                "ttl": f"{self.consul_ttl}s",
                "lock-delay": f"{self.consul_lock_delay}s",
            }
        config: dict[str, Any] = {
            "fuse": {"dir": node.mount_dir},
            "data": {"dir": node.data_dir},
            "http": {"addr": f"127.0.0.1:{node.http_port}"},
            "lease": lease,
            "exit-on-error": False,
        }
        if node.proxy_port is not None:
            config["proxy"] = {
                "addr": f"127.0.0.1:{node.proxy_port}",
                "target": f"127.0.0.1:{self.instances[node.id].port}",
                "db": self.database,
                "passthrough": self.proxy_passthrough,
            }
        return config

    def _launch(self, node: LiteFSNode) -> None:
        assert self.litefs_bin is not None
        with open(node.config_path, "w") as f:
            json.dump(self._config(node), f, indent=2)  # JSON is YAML: LiteFS reads it as is
        logger.info("starting LiteFS %s (api %s, mount %s)", node.id, node.api_url, node.mount_dir)
        process = subprocess.Popen(
            [self.litefs_bin, "mount", "-config", node.config_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        node.process = process
        assert process.stdout is not None
        node._pump = threading.Thread(
            target=pump_output, args=(f"litefs:{node.id}", process.stdout, node.log_path, self.echo), daemon=True
        )
        node._pump.start()
        wait_for(
            lambda: self._api_up(node),
            timeout=self.startup_timeout,
            message=f"LiteFS {node.id} did not come up; log {node.log_path}:\n{log_tail(node.log_path)}",
        )

    def _api_up(self, node: LiteFSNode) -> bool:
        if node.process is None or node.process.poll() is not None:
            raise RuntimeError(
                f"LiteFS {node.id} exited with {node.process.returncode if node.process else '?'}; "
                f"log {node.log_path}:\n{log_tail(node.log_path)}"
            )
        try:
            self.info(node.id, timeout=0.5)
        except (OSError, ValueError):
            return False
        return is_mounted(node.mount_dir)

    def _knows_primary(self, node_id: str, primary: str | None = None) -> bool:
        try:
            info = self.info(node_id)
        except (OSError, ValueError):
            return False
        # With a static lease every node's lease.hostname is the primary's id.
        named = info.get("primary", {}).get("hostname") or None
        return named is not None and (primary is None or named == primary)

    def _join_pump(self, node: LiteFSNode) -> None:
        if node._pump is not None:
            node._pump.join(5)
            node._pump = None

    def _stop_litefs(self, node: LiteFSNode) -> None:
        if node.process is not None:
            logger.info("stopping LiteFS %s (pid %d)", node.id, node.process.pid)
            stop_process_group(node.process, self.stop_timeout, f"LiteFS {node.id}")
            self._join_pump(node)
            node.process = None
        self._unmount(node)

    @staticmethod
    def _unmount(node: LiteFSNode) -> None:
        """Remove a mount its LiteFS left behind (killed): lazily, so open files do not block it."""
        for point in mounts_under(node.mount_dir):
            unmount(point)

    def _relay(self, node_id: str) -> TcpRelay:
        relay = self.nodes[node_id].relay
        if relay is None:
            raise RuntimeError(f"{node_id} replicates through no relay (only static-lease replicas do)")
        return relay

    # -- apps ----------------------------------------------------------------

    def _make_instance(self, node: LiteFSNode) -> Instance:
        return Instance(
            id=node.id,
            region=self.region,
            host="127.0.0.1",
            port=free_port(),
            litefs_dir=node.mount_dir,
            db_path=self.db_path(node.id),
            log_path=os.path.join(self.base_dir, "logs", f"{node.id}.app.log"),
        )

    def _start_apps(self) -> None:
        if self.setup:
            primary = self.instances[self.wait_primary(timeout=self.startup_timeout)]
            log_path = os.path.join(self.base_dir, "logs", "setup.log")
            self.runner.run_setup(self.setup, primary, self._app_environment(primary), log_path)
            self.wait_replicated(self.startup_timeout)
        for instance in self.instances.values():
            self.runner.spawn(instance, self._app_environment(instance))
        for instance in self.instances.values():
            self.runner.wait_ready(instance)
        targets = {i: ("127.0.0.1", self.nodes[i].proxy_port or self.instances[i].port) for i in self.instances}
        self._start_front(targets, dict.fromkeys(targets, self.region), self.region)

    def _app_environment(self, instance: Instance) -> dict[str, str]:
        return {
            "FLY_MACHINE_ID": instance.id,
            "FLY_ALLOC_ID": instance.id,
            "FLY_REGION": instance.region,
            "PRIMARY_REGION": self.region,
            "FLY_APP_NAME": "litefs-cluster",
            "LITEFS_DIR": instance.litefs_dir,
            "DATABASE_FILENAME": self.database,
            "DATABASE_PATH": instance.db_path,
            "LITEFS_API_URL": self.nodes[instance.id].api_url,
            **self.env,
        }
