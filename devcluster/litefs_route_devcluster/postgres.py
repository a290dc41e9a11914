"""A real PostgreSQL primary and a streaming hot standby on one machine, for tests.

:class:`PostgresPair` runs two ``postgres`` servers from the system's own
binaries (Debian's ``postgresql`` package, under ``/usr/lib/postgresql/*/bin``,
or ``POSTGRES_BIN_DIR``): a primary made by ``initdb``, and a standby cloned
from it by ``pg_basebackup -R`` that streams its WAL and answers read-only
queries (``hot_standby``). Both listen on 127.0.0.1 only (no Unix socket), on
ports from :mod:`~litefs_route_devcluster.ports`, with trust authentication
for 127.0.0.1 and settings for speed, not durability (``fsync=off``). Their
data lives in a temporary folder that a
:class:`~litefs_route_devcluster.reaper.FolderReaper` watches: if the process
that started the pair dies (a crashed test, ``kill -9``), the reaper stops
both servers and removes the folder.

PostgreSQL refuses to run as root: as root, ``initdb``, ``pg_basebackup``,
``pg_ctl`` and ``postgres`` run as the ``postgres`` system user, which owns
the folder. The SQL the pair itself sends goes through ``psql`` (no Python
driver needed)::

    with PostgresPair() as pair:
        psycopg.connect(pair.primary_dsn, autocommit=True).execute("CREATE TABLE t (x int)")
        pair.wait_caught_up()
        pair.pause_replay()     # the standby stops applying WAL (it keeps receiving it)
        ...
        pair.resume_replay()
        pair.promote()          # the standby becomes a writable primary

Replay pause states need PostgreSQL 14 or later.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ._lifecycle import StartsAndCloses
from .cluster import log_tail, release_port, wait_for
from .ports import reserve_port
from .reaper import FolderReaper

if TYPE_CHECKING:
    from typing_extensions import Self  # typing's from Python 3.11

__all__ = ["PostgresNode", "PostgresPair", "find_postgres_bin", "postgres_unavailable"]

Node = Literal["primary", "standby"]

#: The tools the pair runs, all from one PostgreSQL version's ``bin``.
_TOOLS = ("initdb", "postgres", "pg_ctl", "pg_basebackup", "psql")
#: The system user PostgreSQL runs as when the caller is root.
_OWNER = "postgres"

#: Settings for both servers: fast, small, local only. Not durable (fsync=off).
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "40",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "wal_keep_size": "64MB",
    "hot_standby": "on",
    # A standby whose primary went away (a restart) retries after this, not after 5 s.
    "wal_retrieve_retry_interval": "100ms",
    "dynamic_shared_memory_type": "posix",
    "huge_pages": "off",
    "logging_collector": "off",
    "log_min_messages": "warning",
}

#: pg_basebackup: write the standby's recovery settings (-R), stream the WAL it needs, checkpoint now.
_CLONE = ("-R", "-X", "stream", "-c", "fast", "--no-sync")
#: psql: no psqlrc, quiet, unaligned, tuples only, stop at the first error; the postgres database.
_PSQL = ("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", "postgres")

_HBA = """\
# litefs_route_devcluster.postgres: trust on 127.0.0.1 only, for tests.
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


def find_postgres_bin() -> str | None:
    """The ``bin`` folder with every tool the pair runs: ``$POSTGRES_BIN_DIR``, else Debian's newest version."""
    explicit = os.environ.get("POSTGRES_BIN_DIR")
    folders = [explicit] if explicit else sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    for folder in folders:
        if all(os.access(os.path.join(folder, tool), os.X_OK) for tool in _TOOLS):
            return folder
    return None


def _version(folder: str) -> tuple[int, ...]:
    name = os.path.basename(os.path.dirname(folder))
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def postgres_unavailable() -> str | None:
    """Why a :class:`PostgresPair` cannot run here (one line), or None if it can."""
    if sys.platform == "win32":
        return "the PostgreSQL pair runs on Linux and other POSIX systems"
    if find_postgres_bin() is None:
        where = os.environ.get("POSTGRES_BIN_DIR") or "/usr/lib/postgresql/*/bin"
        return (
            f"no PostgreSQL server binaries ({', '.join(_TOOLS)}) in {where}: "
            "apt-get install postgresql (bash .ci/install-postgres), or set POSTGRES_BIN_DIR"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_OWNER)
        except KeyError:
            return f"running as root, and PostgreSQL refuses root: no {_OWNER!r} system user to run it as"
    return None


@dataclass
class PostgresNode:
    """One server of the pair: its data folder, port, log and process."""

    name: Node
    data_dir: str
    port: int
    log_path: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def dsn(self) -> str:
        """A libpq URL for the ``postgres`` superuser and database."""
        return f"postgresql://{_OWNER}@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class PostgresPair(StartsAndCloses):
    """A PostgreSQL primary and a streaming hot standby on 127.0.0.1; see the module's docstring.

    *base_dir*: where the data goes (made and removed by the pair when
    omitted; a given folder must be reachable by the ``postgres`` user when
    running as root). *settings*: more ``postgresql.conf`` settings for both
    servers, over the pair's own.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        bin_dir: str | None = None,
        settings: dict[str, str] | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.bin_dir = bin_dir or find_postgres_bin()
        self.settings = {**_SETTINGS, **(settings or {})}
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._owns_base = base_dir is None
        self.base_dir = os.path.abspath(os.fspath(base_dir)) if base_dir is not None else ""
        self.nodes: dict[Node, PostgresNode] = {}
        #: True once :meth:`promote` made the standby a primary.
        self.promoted = False
        self._reaper: FolderReaper | None = None
        self._started = False

    # -- life cycle --------------------------------------------------------

    def start(self) -> Self:
        """initdb and start the primary, clone the standby from it, start it and wait until it streams."""
        if self._started:
            return self
        reason = postgres_unavailable() if self.bin_dir is None else None
        if reason is not None or self.bin_dir is None:
            raise RuntimeError(reason or "no PostgreSQL binaries")
        self._started = True
        try:
            if self._owns_base:
                self.base_dir = tempfile.mkdtemp(prefix="pg-pair-")
                self._reaper = FolderReaper(self.base_dir)
            else:
                os.makedirs(self.base_dir, exist_ok=True)
            self._give_to_owner(self.base_dir)
            for name in ("primary", "standby"):
                self.nodes[name] = PostgresNode(
                    name,
                    os.path.join(self.base_dir, name),
                    reserve_port(),
                    os.path.join(self.base_dir, f"{name}.log"),
                )
            primary, standby = self.nodes["primary"], self.nodes["standby"]
            self._tool(
                "initdb",
                ["-D", primary.data_dir, "-U", _OWNER, "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
            )
            with open(os.path.join(primary.data_dir, "pg_hba.conf"), "w") as hba:
                hba.write(_HBA)
            self._launch(primary)
            self._tool(
                "pg_basebackup",
                ["-h", "127.0.0.1", "-p", str(primary.port), "-U", _OWNER, "-D", standby.data_dir, *_CLONE],
            )
            self._launch(standby)
            wait_for(
                lambda: self.query("standby", "SELECT status FROM pg_stat_wal_receiver") == "streaming",
                timeout=self.startup_timeout,
                interval=0.02,
                message=f"the standby did not stream within {self.startup_timeout} s; log {standby.log_path}:\n"
                + log_tail(standby.log_path),
            )
            self.wait_caught_up(self.startup_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop both servers (``pg_ctl stop -m immediate``), release their ports, remove the folder. Idempotent."""
        for node in self.nodes.values():
            self._stop(node)
            release_port(node.port)
        if self._reaper is not None:  # it removes the folder we made
            self._reaper.close()
            self._reaper = None

    # -- accessors -----------------------------------------------------------

    @property
    def primary(self) -> PostgresNode:
        return self.nodes["primary"]

    @property
    def standby(self) -> PostgresNode:
        return self.nodes["standby"]

    @property
    def primary_dsn(self) -> str:
        """The primary's libpq URL (``postgresql://postgres@127.0.0.1:PORT/postgres``)."""
        return self.primary.dsn

    @property
    def standby_dsn(self) -> str:
        """The standby's libpq URL."""
        return self.standby.dsn

    def pids(self) -> list[int]:
        """The postmasters' pids and their children's (the backends, the WAL sender and receiver...)."""
        found = []
        for node in self.nodes.values():
            if node.process is not None and node.running:
                found.append(node.process.pid)
                found += _children(node.process.pid)
        return found

    # -- SQL ------------------------------------------------------------------

    def query(self, node: Node, sql: str, timeout: float = 10.0) -> str:
        """Run *sql* on *node* through ``psql`` as the superuser; its output, unaligned, tuples only, stripped.

        RuntimeError (with psql's message) if it fails.
        """
        target = self.nodes[node]
        result = subprocess.run(
            [self._bin("psql"), *_PSQL, "-h", "127.0.0.1", "-p", str(target.port), "-U", _OWNER, "-c", sql],
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql on the {node} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip()

    def pause_replay(self, timeout: float = 10.0) -> None:
        """Stop the standby applying WAL (it keeps receiving it); returns once the standby says ``paused``."""
        self.query("standby", "SELECT pg_wal_replay_pause()")
        self._wait_pause_state("paused", timeout)

    def resume_replay(self, timeout: float = 10.0) -> None:
        """Let the standby apply WAL again; returns once it says ``not paused``."""
        self.query("standby", "SELECT pg_wal_replay_resume()")
        self._wait_pause_state("not paused", timeout)

    def wait_caught_up(self, timeout: float = 10.0) -> None:
        """Wait until the standby has replayed the primary's current WAL position; TimeoutError if not in time."""
        target = self.query("primary", "SELECT pg_current_wal_lsn()")
        wait_for(
            lambda: self.query("standby", f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn") == "t",
            timeout=timeout,
            interval=0.02,
            message=f"the standby did not replay up to {target} within {timeout} s",
        )

    def promote(self, timeout: float = 60.0) -> None:
        """Make the standby a primary (``pg_promote(wait => true)``); it accepts writes when this returns."""
        done = self.query(
            "standby", f"SELECT pg_promote(wait => true, wait_seconds => {int(timeout)})", timeout=timeout + 10
        )
        if done != "t":
            raise TimeoutError(f"the standby was not promoted within {timeout} s:\n{log_tail(self.standby.log_path)}")
        self.promoted = True

    def stop_node(self, node: Node) -> None:
        """Stop *node* (``pg_ctl stop -m immediate``: as a crash); its port stays reserved for :meth:`start_node`."""
        self._stop(self.nodes[node])

    def start_node(self, node: Node) -> None:
        """Start a stopped *node* again on its port; returns once it answers queries."""
        if not self.nodes[node].running:
            self._launch(self.nodes[node])

    def restart(self, node: Node) -> None:
        """:meth:`stop_node` then :meth:`start_node`."""
        self.stop_node(node)
        self.start_node(node)

    # -- internals --------------------------------------------------------------

    def _wait_pause_state(self, state: str, timeout: float) -> None:
        wait_for(
            lambda: self.query("standby", "SELECT pg_get_wal_replay_pause_state()") == state,
            timeout=timeout,
            interval=0.01,
            message=f"the standby's replay did not become {state!r} within {timeout} s",
        )

    def _bin(self, tool: str) -> str:
        assert self.bin_dir is not None
        return os.path.join(self.bin_dir, tool)

    def _tool(self, tool: str, args: list[str]) -> None:
        """Run *tool* (as the owner when root) to completion; RuntimeError with its output if it fails."""
        result = subprocess.run(
            [self._bin(tool), *args],
            capture_output=True,
            text=True,
            env=_clean_env(),
            cwd=self.base_dir,
            timeout=self.startup_timeout,
            check=False,
            **_as_owner(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def _launch(self, node: PostgresNode) -> None:
        """Start *node*'s postmaster in its own session, its output to its log; wait until it answers queries."""
        settings = {**self.settings, "port": str(node.port)}
        args = [self._bin("postgres"), "-D", node.data_dir]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                cwd=self.base_dir,
                start_new_session=True,
                **_as_owner(),
            )
        wait_for(
            lambda: self._answers(node),
            timeout=self.startup_timeout,
            interval=0.02,
            message=f"PostgreSQL {node.name} did not accept queries within {self.startup_timeout} s; "
            f"log {node.log_path}:\n{log_tail(node.log_path)}",
        )

    def _answers(self, node: PostgresNode) -> bool:
        if not node.running:
            raise RuntimeError(f"PostgreSQL {node.name} exited; log {node.log_path}:\n{log_tail(node.log_path)}")
        try:
            return self.query(node.name, "SELECT 1", timeout=5) == "1"
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def _stop(self, node: PostgresNode) -> None:
        """``pg_ctl stop -m immediate`` (as a crash: no checkpoint), then make sure its whole session is gone."""
        process, node.process = node.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    [
                        self._bin("pg_ctl"),
                        "stop",
                        "-D",
                        node.data_dir,
                        "-m",
                        "immediate",
                        "-w",
                        "-t",
                        str(int(self.stop_timeout)),
                    ],
                    capture_output=True,
                    env=_clean_env(),
                    cwd=self.base_dir,
                    timeout=self.stop_timeout + 5,
                    check=False,
                    **_as_owner(),
                )
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(self.stop_timeout)
        # Whatever is left of its session (a child the postmaster did not reap) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + self.stop_timeout
        while _session_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _give_to_owner(self, path: str) -> None:
        if os.geteuid() == 0:
            owner = pwd.getpwnam(_OWNER)
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def __repr__(self) -> str:
        ports = ", ".join(f"{n.name}={n.port}" for n in self.nodes.values())
        return f"PostgresPair({self.base_dir!r}, {ports or 'not started'})"


def _as_owner() -> dict[str, Any]:
    """Popen's arguments that run a child as the ``postgres`` user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return {}
    owner = pwd.getpwnam(_OWNER)
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def _clean_env() -> dict[str, str]:
    """Our environment without libpq's variables (a PGHOST or PGPASSWORD of the host must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(word) for word in f.read().split()]
    except (OSError, ValueError):
        return []


def _session_members(sid: int) -> list[int]:
    """Live pids whose session is *sid* (Linux ``/proc``; elsewhere empty)."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            found.append(int(entry))
    return found
