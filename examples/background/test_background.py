"""Every background-work recipe, run for real: Celery worker and beat, RQ, APScheduler, a cron loop, Django.

Each runs as its docstring says, on a mount that is a LiteFS primary (or a
replica) without LiteFS (:mod:`examples.local_mount`; the supervisor on real
LiteFS is ``tests/test_litefs_background.py``). Redis is Debian's
``redis-server`` (``.ci/install-redis``), started here on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue

from examples.conftest import PRIMARY_ID, REPLICA_ID, ROOT
from examples.local_mount import make_mount
from litefs_route_devcluster import free_port, port_open, wait_for
from litefs_route_devcluster.cluster import stop_process_group

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TICK_EVERY = "0.3"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    assert server is not None, "redis-server is missing: run .ci/install-redis"
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: port_open("127.0.0.1", port), timeout=30, message="redis-server did not listen")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process_group(process, 10, "redis-server")


class Node:
    """A mount (primary or replica) and the processes a recipe runs on it."""

    def __init__(self, tmp_path: Path, role: str, extra_env: dict[str, str] | None = None) -> None:
        self.mount = make_mount(tmp_path / role, None if role == "primary" else PRIMARY_ID)
        self.logs = tmp_path / f"{role}-logs"
        self.logs.mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "LITEFS_DIR": str(self.mount),
            "DATABASE_FILENAME": "app.db",
            "FLY_MACHINE_ID": PRIMARY_ID if role == "primary" else REPLICA_ID,
            "PYTHONPATH": str(ROOT),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "TICK_EVERY": TICK_EVERY,
            "DJANGO_SETTINGS_MODULE": "examples.background.django_settings",
            **(extra_env or {}),
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("w") as log:
            process = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def supervise(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        """``litefs-route run --while-primary -- CMD`` (the event stream off: there is no LiteFS here)."""
        options = ["--api-url", "off", "--interval", "0.05", "--start-delay", "0", "--grace", "10"]
        return self.start(name, [str(BIN / "litefs-route"), "run", "--while-primary", *options, "--", *cmd])

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def ticks(self, source: str) -> int:
        db = self.mount / "app.db"
        if not db.exists():
            return 0
        with contextlib.closing(sqlite3.connect(db)) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM ticks WHERE source = ?", (source,)).fetchone()[0])
            except sqlite3.OperationalError:  # no table yet
                return 0

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    made: list[Node] = []

    def make(role: str = "primary", **env: str) -> Node:
        made.append(Node(tmp_path, role, env))
        return made[-1]

    yield make
    for each in made:
        each.stop()


def wait_ticks(node: Node, source: str, count: int, log: str, log_node: Node | None = None) -> None:
    try:
        wait_for(lambda: node.ticks(source) >= count, timeout=60, message=f"fewer than {count} {source} ticks")
    except Exception as exc:
        raise AssertionError(f"{exc}; log:\n{(log_node or node).log(log)[-3000:]}") from None


def _stopped(node: Node, name: str) -> bool:
    return ") stopped (status" in node.log(name)


def test_celery_worker_and_beat_run_under_the_supervisor(node: Callable[..., Node], redis_url: str) -> None:
    primary = node("primary", REDIS_URL=redis_url)
    celery = [str(BIN / "celery"), "-A", "examples.background.celery_app"]
    worker = primary.supervise("worker", [*celery, "worker", "--pool=solo", "--loglevel=INFO"])
    beat = primary.supervise("beat", [*celery, "beat", "-s", str(primary.logs / "beat-schedule"), "--loglevel=INFO"])
    wait_ticks(primary, "celery", 2, "worker")
    # Demoted: both are stopped (Celery's warm shutdown on SIGTERM), the supervisors wait for a promotion.
    make_mount(primary.mount, PRIMARY_ID.replace("e", "f"))
    for name in ("worker", "beat"):
        wait_for(functools.partial(_stopped, primary, name), timeout=60, message=f"{name} not stopped")
    assert worker.poll() is None
    assert beat.poll() is None


def test_a_worker_that_is_never_primary_writes_through_call_on_primary(
    node: Callable[..., Node], redis_url: str
) -> None:
    port = free_port()
    secret = {"LITEFS_ROUTE_FORWARD_SECRET": "example-forward-secret-0123456789"}
    primary = node("primary", **secret)
    primary.start(
        "web", [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "examples.background.web_tasks:app"]
    )
    wait_for(lambda: port_open("127.0.0.1", port), timeout=30, message="the web app did not listen")
    worker = node("replica", REDIS_URL=redis_url, LITEFS_ROUTE_FORWARD_URL=f"http://127.0.0.1:{port}", **secret)
    worker.start("worker", [str(BIN / "celery"), "-A", "examples.background.celery_app", "worker", "--pool=solo"])
    from examples.background.celery_app import app, tick_on_primary

    app.conf.broker_url = redis_url
    result = tick_on_primary.delay()
    wait_ticks(primary, "call_on_primary", 1, "worker", worker)
    assert worker.ticks("call_on_primary") == 0  # the replica's own database was never written
    assert result.id


def test_an_rq_worker_runs_under_the_supervisor(node: Callable[..., Node], redis_url: str) -> None:
    primary = node("primary", REDIS_URL=redis_url)
    primary.supervise("rq", [str(BIN / "rq"), "worker", "--url", redis_url, "background"])
    with Redis.from_url(redis_url) as redis:
        job = Queue("background", connection=redis).enqueue("examples.background.rq_jobs.tick")
        wait_ticks(primary, "rq", 1, "rq")
        wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=30, message="job not finished")
        assert isinstance(job.return_value(), int)


def test_apscheduler_in_process_writes_only_on_the_primary(node: Callable[..., Node]) -> None:
    primary, replica = node("primary"), node("replica")
    argv = [sys.executable, "-m", "examples.background.apscheduler_app"]
    replica.start("scheduler", argv)
    primary.start("scheduler", argv)
    wait_ticks(primary, "apscheduler", 2, "scheduler")
    wait_for(
        lambda: replica.log("scheduler").count("skipped: this node is not the primary") >= 2,
        timeout=60,
        message=f"the replica did not skip; log:\n{replica.log('scheduler')[-3000:]}",
    )
    assert replica.ticks("apscheduler") == 0


def test_a_cron_like_loop_runs_under_the_supervisor(node: Callable[..., Node]) -> None:
    primary = node("primary")
    primary.supervise("cron", ["sh", str(HERE / "cron.sh")])
    wait_ticks(primary, "cron", 2, "cron")


def test_a_django_management_command_runs_under_the_supervisor(node: Callable[..., Node]) -> None:
    primary, replica = node("primary"), node("replica")
    argv = [sys.executable, "-m", "django", "tick", "--every", TICK_EVERY]
    supervisor = primary.supervise("django", argv)
    replica.supervise("django", argv)
    wait_ticks(primary, "django", 2, "django")
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0  # the command's own status: it ends cleanly on SIGTERM
    assert "started " not in replica.log("django")
    assert replica.ticks("django") == 0


def test_the_app_groups_start_script_runs_the_web_server_and_the_supervised_beat(
    node: Callable[..., Node], redis_url: str
) -> None:
    port = free_port()
    primary = node("primary", REDIS_URL=redis_url, BIND=f"127.0.0.1:{port}")
    primary.env["BEAT_SCHEDULE"] = str(primary.logs / "beat-schedule")
    script = primary.start("app", ["sh", str(HERE / "app-start.sh")])
    wait_for(lambda: port_open("127.0.0.1", port), timeout=60, message="the web server did not listen")
    wait_for(lambda: "started celery" in primary.log("app"), timeout=60, message="beat not started")
    with Redis.from_url(redis_url) as redis:  # beat enqueues the tick on its schedule
        wait_for(lambda: redis.llen("celery") >= 1, timeout=60, message="beat queued nothing")
    script.send_signal(signal.SIGTERM)
    assert script.wait(timeout=60) == 0
    assert "passing SIGTERM on to celery" in primary.log("app")  # the supervisor stopped beat before exiting


def test_fly_toml_and_litefs_yml_agree_on_the_process_groups() -> None:
    fly = (HERE / "fly.toml").read_text()
    assert '  app = "litefs mount"' in fly
    assert '  worker = "litefs mount -- celery' in fly
    assert 'processes = ["app"]' in fly  # only the candidates serve HTTP
    litefs = (HERE / "litefs.yml").read_text()
    # Only the web group may hold the lease: the worker group's Machines stay replicas.
    assert 'candidate: ${FLY_PROCESS_GROUP == "app"}' in litefs
    assert "litefs-route run --while-primary" in (HERE / "app-start.sh").read_text()
