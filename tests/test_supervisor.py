"""``litefs-route run --while-primary`` on a mount directory whose role the test sets (no LiteFS).

The supervisor is a real process (``python -m litefs_route run ...``); the
command it supervises records its own life (:mod:`tests.supervised_cmd`).
The real-LiteFS handoff and kill -9 are in ``test_litefs_background.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from tests.support import Mount, wait_until


@dataclass
class Supervised:
    proc: subprocess.Popen[str]
    record: Path
    log: Path

    def events(self, kind: str | None = None) -> list[list[str]]:
        return _events(self.record, kind)

    def has(self, kind: str, count: int = 1) -> bool:
        return len(self.events(kind)) >= count

    def output(self) -> str:
        return self.log.read_text()


def _events(record: Path, kind: str | None = None) -> list[list[str]]:
    """The lines CMD recorded (kind, ..., pid, ...), each split; only those of *kind* if given."""
    if not record.exists():
        return []
    lines = [line.split() for line in record.read_text().splitlines()]
    return [line for line in lines if kind is None or line[0] == kind]


class Start(Protocol):
    def __call__(self, *cmd_args: str, options: tuple[str, ...] = ()) -> Supervised: ...


def _running_copies(events: list[list[str]]) -> int:
    """The most copies the record shows running at once (start to exit)."""
    running, most = 0, 0
    for kind, *_ in events:
        if kind == "start":
            running += 1
        elif kind == "exit":
            running -= 1
        most = max(most, running)
    return most


@pytest.fixture
def supervise(tmp_path: Path, mount: Mount) -> Iterator[Start]:
    started: list[subprocess.Popen[str]] = []

    def start(*cmd_args: str, options: tuple[str, ...] = ()) -> Supervised:
        record, log = tmp_path / "record", tmp_path / f"supervisor-{len(started)}.log"
        argv = [
            sys.executable,
            "-m",
            "litefs_route",
            "run",
            "--while-primary",
            "--dir",
            str(mount.path),
            "--instance-id",
            "me",
            "--api-url",
            "off",
            "--interval",
            "0.05",
            *options,
            "--",
            sys.executable,
            "-m",
            "tests.supervised_cmd",
            str(record),
            "me",
            *cmd_args,
        ]
        with log.open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        return Supervised(proc, record, log)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()  # the supervisor stops its copy of CMD, then exits
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    # A copy whose supervisor was killed runs on in its own process group: it never outlives the test.
    for _, _, pid, *_ in _events(tmp_path / "record", "start"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)


def test_it_runs_only_while_primary_and_again_after_a_later_promotion(supervise: Start, mount: Mount) -> None:
    run = supervise(options=("--grace", "5", "--start-delay", "0.2"))
    wait_until(lambda: run.has("start"), what="CMD started on the primary")
    mount.make_replica("other")
    wait_until(lambda: run.has("exit"), what="CMD stopped on demotion")
    assert [e[0] for e in run.events()] == ["start", "term", "exit"]
    mount.make_no_primary()
    mount.make_primary()
    wait_until(lambda: run.has("start", 2), what="CMD started again on promotion")
    assert _running_copies(run.events()) == 1
    out = run.output()
    assert "this node is the primary (holds the lease" in out
    assert "this node is no longer the primary (" in out
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=10) == 0  # CMD's own status: it exits 0 on SIGTERM
    assert run.events()[-1][0] == "exit"


def test_a_replica_never_starts_it(supervise: Start, mount: Mount) -> None:
    mount.make_replica("other")
    run = supervise(options=("--start-delay", "0"))
    wait_until(lambda: "LiteFS role unknown -> replica" in run.output(), what="the supervisor read the mount")
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=10) == 0
    assert run.events() == []


def test_the_start_delay_holds_a_new_primary_back(supervise: Start, mount: Mount) -> None:
    mount.make_replica("other")
    run = supervise(options=("--start-delay", "1.5"))
    wait_until(lambda: "LiteFS role unknown -> replica" in run.output(), what="the supervisor read the mount")
    promoted = time.time()
    mount.make_primary()
    wait_until(lambda: run.has("start"), what="CMD started")
    assert float(run.events("start")[0][3]) - promoted >= 1.5


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(supervise: Start, mount: Mount) -> None:
    run = supervise("--ignore-term", options=("--grace", "0.5", "--start-delay", "0"))
    wait_until(lambda: run.has("start"), what="CMD started")
    mount.make_replica("other")
    wait_until(lambda: "still runs 0.5 s after SIGTERM: SIGKILL" in run.output(), what="SIGKILL")
    pid = int(run.events("start")[0][2])
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), what="CMD gone")
    assert not run.has("exit")  # killed: it never got to its own end
    mount.make_primary()
    wait_until(lambda: run.has("start", 2), what="a new copy after the killed one")


def test_signals_are_passed_on_and_sigterm_ends_both(supervise: Start, mount: Mount) -> None:
    run = supervise("--exit-code", "7", options=("--start-delay", "0"))
    wait_until(lambda: run.has("start"), what="CMD started")
    run.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: run.has("usr1"), what="SIGUSR1 passed on")
    assert run.proc.poll() is None
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=10) == 7  # the status CMD ended with
    assert [e[0] for e in run.events()] == ["start", "usr1", "term", "exit"]


def test_it_exits_with_the_status_of_a_command_that_ends_by_itself(supervise: Start, mount: Mount) -> None:
    run = supervise("--exit-after", "0", "--exit-code", "3", options=("--start-delay", "0"))
    assert run.proc.wait(timeout=20) == 3
    assert "ended by itself with status 3; exiting with it" in run.output()


def test_restart_starts_it_again_while_primary(supervise: Start, mount: Mount) -> None:
    run = supervise("--exit-after", "0", options=("--start-delay", "0", "--restart"))
    wait_until(lambda: run.has("start", 2), timeout=20, what="CMD restarted")
    assert run.proc.poll() is None
    assert _running_copies(run.events()) == 1


def test_a_second_supervisor_of_the_same_command_never_starts_a_second_copy(
    supervise: Start, mount: Mount, tmp_path: Path
) -> None:
    lock = tmp_path / "cmd.lock"
    first = supervise(options=("--start-delay", "0", "--lock", str(lock)))
    wait_until(lambda: first.has("start"), what="the first copy")
    second = supervise(options=("--start-delay", "0", "--lock", str(lock)))
    wait_until(lambda: "another copy holds" in second.output(), what="the second supervisor found the lock")
    # Its supervisor dies: the copy runs on, orphaned, and still holds the lock (it inherited it).
    first.proc.kill()
    first.proc.wait()
    orphan = int(first.events("start")[0][2])
    assert os.path.exists(f"/proc/{orphan}")
    fd = os.open(lock, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    os.kill(orphan, signal.SIGTERM)
    wait_until(lambda: second.has("start", 2), what="the second supervisor's copy, once the orphan is gone")
    assert _running_copies(second.events()) == 1


def test_no_command_is_a_usage_error(mount: Mount) -> None:
    argv = [sys.executable, "-m", "litefs_route", "run", "--while-primary", "--dir", str(mount.path), "--"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "run: no command given" in done.stderr


@pytest.mark.parametrize(("region", "starts"), [("ord", True), ("lhr", False)], ids=["primary-region", "other-region"])
def test_without_a_mount_it_follows_the_regions(region: str, starts: bool, tmp_path: Path) -> None:
    """Postgres on Fly: no LiteFS mount, PRIMARY_REGION and FLY_REGION: CMD runs in the primary region only."""
    record, log = tmp_path / "record", tmp_path / "supervisor.log"
    env = {k: v for k, v in os.environ.items() if k != "LITEFS_DIR"} | {"PRIMARY_REGION": "ord", "FLY_REGION": region}
    argv = [sys.executable, "-m", "litefs_route", "run", "--while-primary", "--instance-id", "me", "--api-url", "off"]
    argv += [
        "--interval",
        "0.05",
        "--start-delay",
        "0",
        "--",
        sys.executable,
        "-m",
        "tests.supervised_cmd",
        str(record),
    ]
    with log.open("w") as out:
        proc = subprocess.Popen([*argv, "me"], stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        role = "primary" if starts else "replica"
        wait_until(lambda: f"role unknown -> {role} (primary ord; region {region}" in log.read_text(), what="its role")
        if starts:
            wait_until(lambda: len(_events(record, "start")) == 1, what="CMD started in the primary region")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert len(_events(record, "start")) == (1 if starts else 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for _, _, pid, *_ in _events(record, "start"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)
