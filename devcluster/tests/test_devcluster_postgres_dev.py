"""``litefs-route dev --postgres``, run as a real process over real PostgreSQL: the demo in two regions.

``node1`` is in ``ord`` (the primary region: it reads and writes the
primary), ``node2`` in ``lhr`` (it reads the hot standby). Skipped where
PostgreSQL's server binaries are missing, failed instead under
``POSTGRES_REQUIRED=1`` (as the ``postgres_pair`` fixture).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from litefs_route._postgres import parse_lsn
from litefs_route_devcluster import port_open, wait_for
from litefs_route_devcluster.pytest_plugin import require_postgres
from tests.support import FORCE, ROOT, start_dev


class _Dev:
    """The running command: its front, the servers' URLs and folders, and a way to type commands."""

    def __init__(self, process: subprocess.Popen[str], lines: list[str]) -> None:
        self.process = process
        self.banner = "".join(lines)
        assert lines, "no output before the command ended"
        assert lines[-1].startswith("ready: front http://127.0.0.1:"), self.banner
        self.front = lines[-1].split()[-1]
        found = dict(re.findall(r"postgres (primary|standby)\s+(postgresql://\S+)", self.banner))
        self.primary_dsn, self.standby_dsn = found["primary"], found["standby"]
        self.pg_ports = [int(dsn.rsplit(":", 1)[1].split("/")[0]) for dsn in (self.primary_dsn, self.standby_dsn)]
        [self.pg_data] = re.findall(r"^PostgreSQL data: (\S+) ", self.banner, re.MULTILINE)
        self.app_ports = [int(p) for p in re.findall(r"node\d\s+\w+\s.*http://127\.0\.0\.1:(\d+)", self.banner)]

    def command(self, line: str, until: str) -> str:
        """Type *line*; the output up to and including the first line containing *until*."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        out = []
        for answer in self.process.stdout:
            out.append(answer)
            if until in answer:
                break
        return "".join(out)


@pytest.fixture
def dev() -> Iterator[_Dev]:
    require_postgres()
    process, lines = start_dev("--postgres", stdin=subprocess.PIPE)
    with process:
        try:
            yield _Dev(process, lines)
            assert process.stdin is not None
            process.stdin.write("quit\n")
            process.stdin.flush()
            assert process.wait(60) == 0
        finally:
            if process.poll() is None:
                process.kill()


def _rows(dsn: str, text: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn, connect_timeout=5) as db:
        return [
            (str(on), str(region))
            for on, region in db.execute("SELECT written_on, region FROM entries WHERE text = %s", (text,))
        ]


def _replayed(dsn: str, lsn: int) -> bool:
    """True once the server at *dsn* (the standby) has replayed the WAL up to *lsn*."""
    with psycopg.connect(dsn, connect_timeout=5) as db:
        row = db.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
    assert row is not None
    replayed = parse_lsn(str(row[0]))
    return replayed is not None and replayed >= lsn


def _cookie_lsn(response: httpx.Response) -> int:
    """The primary's WAL position the ``__lsn`` cookie carries (16 hex digits)."""
    value = response.cookies["__lsn"]
    assert re.fullmatch(r"[0-9a-f]{16}", value), value
    assert int(value, 16) > 0
    return int(value, 16)


def _post(client: httpx.Client, text: str, instance: str) -> httpx.Response:
    return client.post("/entries", data={"text": text}, headers={FORCE: instance})


@pytest.mark.postgres
def test_a_form_posted_in_lhr_runs_once_in_ord_and_is_listed_in_both_regions(dev: _Dev) -> None:
    assert "node1 in ord" in dev.banner
    assert "node2 in lhr" in dev.banner
    assert "Writes in lhr are replayed to region ord" in dev.banner
    text = f"hello {uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=dev.front, timeout=30) as client:
        posted = _post(client, text, "node2")
        assert posted.status_code == 303, posted.text
        # It ran in ord, on a request the front replayed from node2 in lhr.
        assert posted.headers["Demo-Instance"] == "node1"
        assert posted.headers["Demo-Region"] == "ord"
        assert posted.headers["Demo-Replayed-From"].startswith("instance=node2;region=lhr;")
        assert posted.headers["Fly-Primary-Region"] == "ord"
        lsn = _cookie_lsn(posted)

        assert _rows(dev.primary_dsn, text) == [("node1", "ord")]  # once, on the primary
        assert "replays so far: 1" in dev.command("status", until="replays so far")

        ord_page = client.get("/", headers={FORCE: "node1"})
        assert ord_page.headers["Demo-Instance"] == "node1"
        assert text in ord_page.text

        wait_for(lambda: _replayed(dev.standby_dsn, lsn), timeout=30, message="the standby did not replay the write")
        lhr_page = client.get("/", headers={FORCE: "node2"})
        assert lhr_page.status_code == 200
        assert lhr_page.headers["Demo-Instance"] == "node2"  # read in lhr, from the standby
        assert "Demo-Replayed-From" not in lhr_page.headers
        assert text in lhr_page.text
    assert _rows(dev.standby_dsn, text) == [("node1", "ord")]


@pytest.mark.postgres
def test_a_read_in_lhr_behind_its_cookie_is_replayed_to_ord_until_the_standby_catches_up(dev: _Dev) -> None:
    assert "paused" in dev.command("pause", until="paused")
    text = f"paused {uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=dev.front, timeout=30) as client:
        posted = _post(client, text, "node2")
        assert posted.status_code == 303, posted.text
        assert posted.headers["Demo-Region"] == "ord"
        lsn = _cookie_lsn(posted)
        assert not _replayed(dev.standby_dsn, lsn)  # the standby is held back

        # The client's cookie names a position lhr has not replayed: not answered from the stale standby.
        behind = client.get("/", headers={FORCE: "node2"})
        assert behind.status_code == 200
        assert behind.headers["Demo-Region"] == "ord"
        assert behind.headers["Demo-Replayed-From"].startswith("instance=node2;region=lhr;")
        assert text in behind.text
        assert _rows(dev.standby_dsn, text) == []  # still not there: the page came from ord

        assert "resumed" in dev.command("resume", until="resumed")
        wait_for(lambda: _replayed(dev.standby_dsn, lsn), timeout=30, message="the standby did not catch up")
        caught_up = client.get("/", headers={FORCE: "node2"})
        assert caught_up.headers["Demo-Instance"] == "node2"
        assert "Demo-Replayed-From" not in caught_up.headers
        assert text in caught_up.text


@pytest.mark.postgres
def test_the_prompt_says_what_the_postgres_cluster_does_not_do(dev: _Dev) -> None:
    out = dev.command("promote node2", until="promote")
    assert "not in the Postgres cluster" in out
    assert "PRIMARY_REGION=ord" in out
    out = dev.command("help", until="quit")
    assert "pause" in out
    assert "resume" in out
    assert "Traceback" not in out


def _postgres_processes(folder: str) -> list[int]:
    """Live processes working in *folder* (the postmasters and their children run in their data folders)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b") ", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != b"Z" and (cwd == folder or cwd.startswith(folder + os.sep)):
            found.append(int(entry))
    return found


@pytest.mark.postgres
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_ctrl_c_or_sigterm_leaves_no_postgres_behind(signum: int, code: int) -> None:
    require_postgres()
    process, lines = start_dev("--postgres", stdin=subprocess.DEVNULL)
    with process:
        try:
            dev = _Dev(process, lines)
            assert process.stdout is not None
            assert process.stdout.readline() == "stdin closed; running until SIGINT or SIGTERM\n"
            assert len(_postgres_processes(dev.pg_data)) >= 2  # both postmasters (and their children), seen
            assert all(port_open("127.0.0.1", port) for port in dev.pg_ports + dev.app_ports)
            process.send_signal(signum)
            assert process.wait(60) == code
            assert process.stdout.read().rstrip().endswith("stopped")
        finally:
            if process.poll() is None:
                process.kill()
    # Stopped before the command returned: nothing left to wait for.
    assert _postgres_processes(dev.pg_data) == []
    assert not any(port_open("127.0.0.1", port) for port in dev.pg_ports + dev.app_ports)
    assert not os.path.exists(dev.pg_data)


def test_without_postgresql_it_exits_2_naming_the_install(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "litefs_route", "dev", "--postgres", "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "POSTGRES_BIN_DIR": str(tmp_path)},  # a folder without PostgreSQL's binaries
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "litefs-route dev --postgres: no PostgreSQL server binaries" in done.stderr
    assert ".ci/install-postgres" in done.stderr
    assert "apt-get install postgresql" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lag", "1"], "--lag is the imitation's"),
        (["--instances", "1"], "at least 2 instances, one in each region"),
    ],
)
def test_postgres_options_that_do_not_apply_are_one_clear_line(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "litefs_route", "dev", "--postgres", *args, "--port", "0"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
