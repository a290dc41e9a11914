"""Postgres read replicas end to end (issue 28.3): Flask, FastAPI and Django (WSGI, ASGI) on a real primary and standby.

Two "regions" on 127.0.0.1: ``ord``, the primary region, whose instance reads
and writes the pair's primary; ``lhr``, whose instances read its streaming hot
standby. Every instance runs the same app (``tests/postgres_apps``) in a real
server process behind litefs-route's middleware with ``source="postgres"``,
``PRIMARY_REGION=ord``; the Fly-like front proxy honours ``fly-replay:
region=`` with the instance -> region map, and a test pins a request to an
instance with ``fly-force-instance-id`` (as ``flyctl`` and Fly's edge allow).

The two lhr instances differ in their options: ``lhr1`` is patient
(``consistency_wait`` 10 s, so a test can act while a read waits), ``lhr2``
impatient (``consistency_wait`` 0.5 s and ``max_lag`` 0.5 s: the timeouts).

No sleeps: the standby is held back with ``pg_wal_replay_pause()``, and every
wait is on a condition the servers report. One pair and one set of servers
per framework for the module; the table is emptied before each test. The
promotion test gets a pair of its own (``postgres_pair``): it ends the pair's
replication for good.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from litefs_route_devcluster import FrontProxy, free_port, port_open, release_port, wait_for
from litefs_route_devcluster.cluster import stop_process_group
from litefs_route_devcluster.postgres import Node, PostgresPair
from litefs_route_devcluster.pytest_plugin import PostgresPairFactory, require_postgres
from tests.postgres_apps.common import SCHEMA
from tests.support import ROOT, wait_until

pytestmark = pytest.mark.postgres

PRIMARY_REGION = "ord"
FORCE = "fly-force-instance-id"
#: The middleware's fly-replay for a write in lhr: the primary region, our hop counter, Fly's fallback.
REPLAY_TO_ORD = "region=ord;state=litefs-route-hop-1;timeout=5s;fallback=force_self"
LSN_COOKIE = re.compile(r"^__lsn=([0-9a-f]{16}); Path=/; Max-Age=300; HttpOnly; SameSite=Lax$")
#: A line of a server's log that reports an error: Python's logging (ours, Werkzeug's, Django's), uvicorn's,
#: gunicorn's, a traceback, or Django's got_request_exception (tests/postgres_apps/django_site/apps.py).
ERROR_LINE = re.compile(r"^.*(?:\bERROR\b|\bCRITICAL\b|Traceback|SIGNAL got_request_exception).*$", re.MULTILINE)


def _command(framework: str, port: int) -> list[str]:
    """The real server each framework runs under, on 127.0.0.1:*port*."""
    if framework == "flask":  # Werkzeug's threaded server
        app = "tests.postgres_apps.flask_app:app"
        return [sys.executable, "-m", "litefs_route_devcluster._serve", app, "--interface", "wsgi", "--port", str(port)]
    if framework == "fastapi":  # uvicorn; a header up to 64 KB (the hostile cookies)
        app = "tests.postgres_apps.fastapi_app:app"
        limits = ["--h11-max-incomplete-event-size", "65536", "--log-level", "warning"]
        return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), *limits]
    if framework == "django":  # gunicorn, threaded worker: a read waits while another request is served
        bind = ["-b", f"127.0.0.1:{port}", "-w", "1", "--threads", "8", "--limit-request-field_size", "65536"]
        return [sys.executable, "-m", "gunicorn", *bind, "tests.postgres_apps.django_site.wsgi"]
    if framework == "django-asgi":  # uvicorn: the middleware's async path, the sync views in Django's thread
        app = "tests.postgres_apps.django_site.asgi:application"
        limits = ["--h11-max-incomplete-event-size", "65536", "--log-level", "warning"]
        return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), *limits]
    raise ValueError(framework)


FRAMEWORKS = ["flask", "fastapi", "django", "django-asgi"]


@dataclass(frozen=True)
class Spec:
    """One instance: its id, its region, the server of the pair it reads, and its middleware options."""

    instance: str
    region: str
    node: Node
    options: Mapping[str, Any] = field(default_factory=dict)


ORD1 = Spec("ord1", "ord", "primary")
LHR1 = Spec("lhr1", "lhr", "standby", {"consistency_wait": 10})
LHR2 = Spec("lhr2", "lhr", "standby", {"consistency_wait": 0.5, "max_lag": 0.5})


@dataclass
class Server:
    spec: Spec
    url: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]
    #: Bytes of the log before the current test.
    mark: int = 0

    def output(self) -> str:
        return self.log.read_bytes()[self.mark :].decode(errors="replace")


@contextmanager
def _processes(framework: str, pair: PostgresPair, specs: list[Spec], run: Path, **env: str) -> Iterator[list[Server]]:
    """*specs* started as real servers (all at once), each listening; every process group stopped after."""
    servers: list[Server] = []
    try:
        for spec in specs:
            port = free_port()
            log = run / f"{framework}-{spec.instance}-{port}.log"
            environ = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
                "DATABASE_URL": pair.nodes[spec.node].dsn,
                "PRIMARY_REGION": PRIMARY_REGION,
                "FLY_REGION": spec.region,
                "FLY_MACHINE_ID": spec.instance,
                "LITEFS_ROUTE_JSON": json.dumps(dict(spec.options)),
                **env,
            }
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    _command(framework, port),
                    env=environ,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    start_new_session=True,
                )
            servers.append(Server(spec, f"http://127.0.0.1:{port}", port, log, process))
        for server in servers:

            def listening(server: Server = server) -> bool:
                if server.process.poll() is not None:
                    raise AssertionError(f"{server.spec.instance} exited:\n{server.log.read_text(errors='replace')}")
                return port_open("127.0.0.1", server.port)

            wait_for(listening, timeout=60, message=f"{framework} {server.spec.instance} did not listen")
        yield servers
    finally:
        for server in servers:
            stop_process_group(server.process, 10, server.spec.instance)
            release_port(server.port)


class Deployment:
    """A framework's instances on the pair, behind the front proxy; what a test does with them."""

    def __init__(self, framework: str, pair: PostgresPair, front: FrontProxy, servers: list[Server]) -> None:
        self.framework = framework
        self.pair = pair
        self.front = front
        self.servers = {server.spec.instance: server for server in servers}

    # -- requests ---------------------------------------------------------------------

    def on(self, instance: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Through the front proxy, pinned to *instance* (``fly-force-instance-id``); replays followed by the front."""
        headers = {FORCE: instance, **kwargs.pop("headers", {})}
        return httpx.request(method, self.front.url + path, headers=headers, timeout=60, **kwargs)

    def direct(self, instance: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Straight to *instance*, no front proxy: what the middleware itself answers."""
        return httpx.request(method, self.servers[instance].url + path, timeout=60, **kwargs)

    def counters(self, instance: str) -> dict[str, float]:
        counted: dict[str, float] = self.direct(instance, "GET", "/state").json()["counters"]
        return counted

    def waiting(self, instance: str) -> int:
        return int(self.direct(instance, "GET", "/state").json()["waiting"])

    # -- the database -----------------------------------------------------------------

    def rows(self, name: str, node: Node = "primary") -> list[tuple[str, str]]:
        """(name, instance) of every row called *name* on *node*, read there."""
        with psycopg.connect(self.pair.nodes[node].dsn, autocommit=True) as conn:
            found = conn.execute("SELECT name, instance FROM items WHERE name = %s ORDER BY id", (name,)).fetchall()
        return [(str(n), str(i)) for n, i in found]

    def primary_lsn(self) -> int:
        return int(self.pair.query("primary", "SELECT pg_current_wal_lsn() - '0/0'"))

    # -- the servers ------------------------------------------------------------------

    def errors(self, instance: str) -> list[str]:
        """The lines of *instance*'s log, since the test began, that report an error."""
        return ERROR_LINE.findall(self.servers[instance].output())

    def reset(self) -> None:
        """For the next test: replay running and caught up, an empty table, no replays seen, logs marked."""
        if self.pair.query("standby", "SELECT pg_get_wal_replay_pause_state()") != "not paused":
            self.pair.resume_replay()
        self.pair.query("primary", "TRUNCATE items RESTART IDENTITY")
        self.pair.wait_caught_up()
        self.front.reset_stats()
        for server in self.servers.values():
            server.mark = server.log.stat().st_size


@contextmanager
def _deployed(framework: str, pair: PostgresPair, specs: list[Spec], run: Path) -> Iterator[Deployment]:
    with _processes(framework, pair, specs, run) as servers:
        front = FrontProxy(
            {s.spec.instance: ("127.0.0.1", s.port) for s in servers},
            regions={s.spec.instance: s.spec.region for s in servers},
            health_path="/health",
            health_interval=0.1,
        )
        with front:
            yield Deployment(framework, pair, front, servers)


@pytest.fixture(scope="module")
def shared_pair() -> Iterator[PostgresPair]:
    """One pair for the module (``postgres_pair`` is per test): skipped without PostgreSQL, failed if required."""
    require_postgres()
    with PostgresPair() as pair:
        pair.query("primary", SCHEMA)
        pair.wait_caught_up()
        yield pair


@pytest.fixture(scope="module", params=FRAMEWORKS)
def running(
    request: pytest.FixtureRequest, shared_pair: PostgresPair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    framework = str(request.param)
    with _deployed(framework, shared_pair, [ORD1, LHR1, LHR2], tmp_path_factory.mktemp(framework)) as deployment:
        yield deployment


@pytest.fixture
def deployment(running: Deployment) -> Iterator[Deployment]:
    running.reset()
    yield running
    if running.pair.query("standby", "SELECT pg_get_wal_replay_pause_state()") != "not paused":
        running.pair.resume_replay()  # a failed test leaves the next one a running standby


def _lsn_cookie(response: httpx.Response) -> str:
    """The ``__lsn`` value the response sets (it must set exactly one)."""
    found = [m[1] for v in response.headers.get_list("set-cookie") if (m := LSN_COOKIE.match(v))]
    assert len(found) == 1, response.headers.get_list("set-cookie")
    return found[0]


def _names(response: httpx.Response) -> list[str]:
    return [item["name"] for item in response.json()["items"]]


def _replays(front: FrontProxy) -> list[tuple[str, str, str | None, str | None]]:
    return [(e.method, e.from_instance, e.to_instance, e.state) for e in front.replays]


def _delta(after: Mapping[str, float], before: Mapping[str, float], name: str) -> float:
    return after.get(name, 0) - before.get(name, 0)


# -- 1. a write in the replica region ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent_to", "replays"),
    [
        pytest.param("lhr1", [("POST", "lhr1", "ord1", "litefs-route-hop-1")], id="on-lhr-replayed-to-ord"),
        pytest.param("ord1", [], id="on-ord-runs-there"),
    ],
)
def test_a_write_runs_once_in_the_primary_region(
    deployment: Deployment, sent_to: str, replays: list[tuple[str, str, str, str]]
) -> None:
    before = deployment.primary_lsn()
    response = deployment.on(sent_to, "POST", "/items", data={"name": "written"})

    assert response.status_code == 200, response.text
    assert response.json()["instance"] == "ord1"  # the app's answer, from the primary region
    assert response.headers["fly-instance"] == "ord1"
    assert response.headers["fly-primary-region"] == PRIMARY_REGION
    assert "fly-primary-instance" not in response.headers  # a region, not an instance
    assert _replays(deployment.front) == replays
    assert deployment.rows("written") == [("written", "ord1")]  # once, on the primary
    # Read-your-writes: the primary's WAL position after the write, as 16 hex digits.
    assert before < int(_lsn_cookie(response), 16) <= deployment.primary_lsn()


def test_the_standby_region_answers_a_write_with_a_replay_to_the_primary_region(deployment: Deployment) -> None:
    """What the front proxy acts on, seen without it: 409 + fly-replay: region=ord, and nothing ran."""
    response = deployment.direct("lhr1", "POST", "/items", data={"name": "not-here"})

    assert response.status_code == 409, response.text
    assert response.headers["fly-replay"] == REPLAY_TO_ORD
    assert response.headers["fly-primary-region"] == PRIMARY_REGION
    assert response.headers["fly-instance"] == "lhr1"
    assert "set-cookie" not in response.headers
    assert "must run in region ord" in response.text
    assert deployment.rows("not-here") == []
    assert deployment.rows("not-here", "standby") == []


def test_a_write_whose_replay_finds_no_instance_in_the_primary_region_comes_back_and_is_refused(
    deployment: Deployment,
) -> None:
    """Fly's proxy finds no Machine in ord and sends the request back (fly-replay-failed): 503, never run in lhr."""
    everyone = deployment.front.instances
    deployment.front.set_instances({k: v for k, v in everyone.items() if k != "ord1"})
    try:
        response = deployment.on("lhr1", "POST", "/items", data={"name": "lost"})
    finally:
        deployment.front.set_instances(everyone)

    assert response.status_code == 503, response.text
    assert "the replay to region ord failed (no_candidate)" in response.text
    assert (response.headers["fly-instance"], response.headers["retry-after"]) == ("lhr1", "2")
    assert [e.refused for e in deployment.front.replays] == ["fallback-no_candidate"]
    assert deployment.rows("lost") == []


# -- 2. read-your-writes ------------------------------------------------------------------------------


def _write_while_held_back(deployment: Deployment, via: str, name: str) -> str:
    """Pause the standby's replay, write *name* through *via* (replayed to ord); the ``__lsn`` cookie."""
    deployment.pair.pause_replay()
    written = deployment.on(via, "POST", "/items", data={"name": name})
    assert written.status_code == 200, written.text
    assert written.headers["fly-instance"] == "ord1"
    assert deployment.rows(name, "standby") == []  # held back: the standby has not applied it
    return _lsn_cookie(written)


def test_a_read_after_a_write_is_replayed_to_the_primary_region_when_the_standby_stays_behind(
    deployment: Deployment,
) -> None:
    lsn = _write_while_held_back(deployment, "lhr2", "mine")
    counted = deployment.counters("lhr2")

    began = time.monotonic()
    read = deployment.on("lhr2", "GET", "/items", headers={"Cookie": f"__lsn={lsn}"})
    took = time.monotonic() - began

    assert read.status_code == 200, read.text
    assert read.headers["fly-instance"] == "ord1"  # answered by the primary region
    assert read.json()["instance"] == "ord1"
    assert _names(read) == ["mine"]
    assert took >= 0.5  # lhr2's consistency_wait, waited out first
    assert _replays(deployment.front) == [
        ("POST", "lhr2", "ord1", "litefs-route-hop-1"),
        ("GET", "lhr2", "ord1", "litefs-route-hop-1"),
    ]
    assert _delta(deployment.counters("lhr2"), counted, "read_replays") == 1
    assert deployment.rows("mine", "standby") == []  # still held back: the read was not answered from it


def test_a_read_after_a_write_is_answered_by_the_standby_once_it_replays_that_far(deployment: Deployment) -> None:
    lsn = _write_while_held_back(deployment, "lhr1", "mine")

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(deployment.on, "lhr1", "GET", "/items", headers={"Cookie": f"__lsn={lsn}"})
        wait_until(lambda: deployment.waiting("lhr1") == 1, timeout=30, what="the read to wait for its LSN on lhr1")
        assert not pending.done()
        deployment.pair.resume_replay()
        read = pending.result(timeout=30)

    assert read.status_code == 200, read.text
    assert read.headers["fly-instance"] == "lhr1"  # answered by the standby's region
    assert read.json()["instance"] == "lhr1"
    assert _names(read) == ["mine"]
    assert _replays(deployment.front) == [("POST", "lhr1", "ord1", "litefs-route-hop-1")]  # the write's only
    assert "set-cookie" not in read.headers  # a read sets no cookie, and keeps the one it has


def test_a_read_whose_lsn_the_standby_has_passed_runs_there_at_once(deployment: Deployment) -> None:
    written = deployment.on("lhr2", "POST", "/items", data={"name": "mine"})
    deployment.pair.wait_caught_up()
    counted = deployment.counters("lhr2")

    read = deployment.on("lhr2", "GET", "/items", headers={"Cookie": f"__lsn={_lsn_cookie(written)}"})

    assert (read.status_code, read.headers["fly-instance"], _names(read)) == (200, "lhr2", ["mine"])
    assert [e.method for e in deployment.front.replays] == ["POST"]
    assert _delta(deployment.counters("lhr2"), counted, "read_replays") == 0


# -- 3. the safety net: a write inside a GET --------------------------------------------------------------


def test_a_write_inside_a_get_on_the_standby_is_replayed_and_runs_once(deployment: Deployment) -> None:
    counted = deployment.counters("lhr1")

    response = deployment.on("lhr1", "GET", "/oops", params={"name": "hidden"})

    assert response.status_code == 200, response.text
    assert response.json()["instance"] == "ord1"
    assert response.headers["fly-instance"] == "ord1"
    assert _replays(deployment.front) == [("GET", "lhr1", "ord1", "litefs-route-hop-1")]
    assert deployment.rows("hidden") == [("hidden", "ord1")]  # once: the standby refused it, ord ran it
    assert _delta(deployment.counters("lhr1"), counted, "safety_net") == 1
    assert deployment.errors("lhr1") == []
    assert deployment.errors("ord1") == []
    # The witness: a real bug on lhr1 is still a 500, and still in its log.
    boom = deployment.on("lhr1", "GET", "/boom")
    assert boom.status_code == 500
    wait_until(lambda: deployment.errors("lhr1") != [], what="the real bug in lhr1's log")
    assert [e.method for e in deployment.front.replays] == ["GET"]  # the bug was not replayed
    # ord measured the replayed GET as a write: its __lsn cookie makes the next read see the row.
    read = deployment.on("lhr1", "GET", "/items", headers={"Cookie": f"__lsn={_lsn_cookie(response)}"})
    assert "hidden" in _names(read)


# -- 4. health -------------------------------------------------------------------------------------------------


def test_health_fails_on_a_standby_whose_replay_falls_behind_and_passes_once_caught_up(deployment: Deployment) -> None:
    def health(instance: str) -> httpx.Response:
        return deployment.direct(instance, "GET", "/health")

    assert health("lhr2").status_code == 200
    deployment.pair.pause_replay()
    on_ord: list[int] = []
    failed: list[httpx.Response] = []

    def lagging() -> bool:
        deployment.pair.query("primary", "INSERT INTO items (name, instance) VALUES ('lag', 'psql')")
        on_ord.append(health("ord1").status_code)
        checked = health("lhr2")
        failed[:] = [checked]
        return checked.status_code == 503

    wait_until(lagging, timeout=30, what="lhr2's health check to fail")
    assert "exceeds 0.5 s" in failed[0].text
    deployment.front.wait_checked()
    assert "lhr2" not in deployment.front.in_rotation  # Fly's proxy stops sending it traffic

    deployment.pair.resume_replay()
    deployment.pair.wait_caught_up()
    wait_until(lambda: health("lhr2").status_code == 200, what="lhr2's health check to pass again")
    on_ord.append(health("ord1").status_code)
    assert set(on_ord) == {200}  # the primary region always passes
    deployment.front.wait_checked()
    assert "lhr2" in deployment.front.in_rotation


# -- 6. hostile __lsn cookies ----------------------------------------------------------------------------------

HOSTILE_LSN = [
    pytest.param("__lsn=zz", id="garbage"),
    pytest.param("__lsn=" + "f" * 17, id="17-hex-digits"),
    pytest.param("__lsn=" + "f" * 15, id="15-hex-digits"),
    pytest.param("__lsn=FFFFFFFF/FFFFFFFF", id="postgres-text-form"),
    pytest.param("__lsn=" + "0" * 16, id="zero"),
    pytest.param("__lsn=", id="empty"),
    pytest.param("__lsn=-fffffffffffffff", id="negative"),
    pytest.param("__lsn_other=" + "f" * 16, id="unknown-database"),
    pytest.param("a=" + "x" * 17_000 + "; __lsn=" + "f" * 16, id="huge-header"),
    pytest.param("; ;=;__lsn;__lsn==;__lsn=ff ff", id="separators"),
]


@pytest.mark.parametrize("cookie", HOSTILE_LSN)
def test_a_hostile_lsn_cookie_is_ignored(deployment: Deployment, cookie: str) -> None:
    """On lhr1 (a 10 s consistency_wait) a cookie it honoured would hold the read 10 s, then replay it."""
    deployment.on("ord1", "POST", "/items", data={"name": "there"})
    deployment.pair.wait_caught_up()
    counted = deployment.counters("lhr1")

    began = time.monotonic()
    read = deployment.on("lhr1", "GET", "/items", headers={"Cookie": cookie})
    took = time.monotonic() - began

    assert read.status_code == 200, read.text[:300]
    assert (read.headers["fly-instance"], _names(read)) == ("lhr1", ["there"])
    assert took < 5  # never waited for it
    assert deployment.front.replays == []
    assert _delta(deployment.counters("lhr1"), counted, "consistency_waits") == 0
    assert deployment.errors("lhr1") == []


def test_an_lsn_cookie_ahead_of_the_primary_is_ignored_there_and_cleared(deployment: Deployment) -> None:
    """The primary never waits: a position it has not reached (a forged cookie, or one from before a failover)."""
    read = deployment.on("ord1", "GET", "/items", headers={"Cookie": "__lsn=" + "f" * 16})

    assert (read.status_code, read.headers["fly-instance"]) == (200, "ord1")
    assert read.headers.get_list("set-cookie") == ["__lsn=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"]


# -- 5. promotion ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_after_a_promotion_writes_follow_primary_region_until_it_is_changed(
    postgres_pair: PostgresPairFactory, framework: str, tmp_path: Path
) -> None:
    """As ``_postgres_source``'s docstring says: which region is primary is configuration, not discovery.

    After ``pg_promote()`` on lhr's standby, writes sent to lhr are still
    replayed to ord while ``PRIMARY_REGION`` says ord (they land on the old
    primary). The promoted server no longer receives ord's WAL: a read waiting
    for a write of ord is replayed there, never answered from lhr without the
    write. lhr's health check fails (a server outside the primary region that
    is no standby has no lag), so Fly's proxy takes it out of rotation; a
    write the app makes in a GET sent to lhr all the same is not
    refused by the promoted server: it runs there (the safety net needs a
    standby's 25006), while ord's server takes the writes routed there: two
    writable servers until the redeploy. Redeployed with ``PRIMARY_REGION=lhr``,
    lhr runs writes itself, on the promoted server, and ord replays its writes to lhr;
    ord's old primary, now outside the primary region and no standby, fails its health check.
    """
    pair = postgres_pair()
    pair.query("primary", SCHEMA)
    pair.wait_caught_up()
    with _deployed(framework, pair, [ORD1, LHR2], tmp_path) as deployment:
        assert deployment.direct("lhr2", "GET", "/health").status_code == 200
        pair.promote()

        stale = deployment.on("lhr2", "POST", "/items", data={"name": "after-promote"})
        assert stale.status_code == 200, stale.text
        assert (stale.json()["instance"], stale.headers["fly-primary-region"]) == ("ord1", "ord")
        assert _replays(deployment.front) == [("POST", "lhr2", "ord1", "litefs-route-hop-1")]
        assert deployment.rows("after-promote", "primary") == [("after-promote", "ord1")]
        assert deployment.rows("after-promote", "standby") == []  # the promoted server never gets it

        # Fail safe: a server outside the primary region that is no standby fails its health check.
        checked = deployment.direct("lhr2", "GET", "/health")
        assert (checked.status_code, "no standby" in checked.text) == (503, True)
        deployment.front.reset_stats()
        read = deployment.on("lhr2", "GET", "/items", headers={"Cookie": f"__lsn={_lsn_cookie(stale)}"})
        assert (read.headers["fly-instance"], _names(read)) == ("ord1", ["after-promote"])
        assert _replays(deployment.front) == [("GET", "lhr2", "ord1", "litefs-route-hop-1")]

        deployment.front.reset_stats()
        hidden = deployment.on("lhr2", "GET", "/oops", params={"name": "hidden"})
        assert (hidden.status_code, hidden.json()["instance"]) == (200, "lhr2"), hidden.text
        assert deployment.front.replays == []
        assert deployment.rows("hidden", "standby") == [("hidden", "lhr2")]
        assert deployment.rows("hidden", "primary") == []

        # The redeploy: every instance told the new primary region.
        deployment.front.reset_stats()
        with _processes(framework, pair, [ORD1, LHR2], tmp_path, PRIMARY_REGION="lhr") as servers:
            deployment.front.set_instances({s.spec.instance: ("127.0.0.1", s.port) for s in servers})
            # As Fly's proxy: new Machines take traffic once their health check passes.
            deployment.front.wait_checked()
            # The old primary, now outside the primary region and no standby, fails its check: out of rotation.
            assert deployment.front.in_rotation == ["lhr2"]
            local = deployment.on("lhr2", "POST", "/items", data={"name": "on-lhr"})
            moved = deployment.on("ord1", "POST", "/items", data={"name": "from-ord"})
            health = {s.spec.instance: httpx.get(s.url + "/health", timeout=30).status_code for s in servers}

        assert local.status_code == 200, local.text
        assert (local.json()["instance"], local.headers["fly-primary-region"]) == ("lhr2", "lhr")
        assert moved.status_code == 200, moved.text
        assert (moved.json()["instance"], moved.headers["fly-primary-region"]) == ("lhr2", "lhr")
        assert _replays(deployment.front) == [("POST", "ord1", "lhr2", "litefs-route-hop-1")]
        assert deployment.rows("on-lhr", "standby") == [("on-lhr", "lhr2")]
        assert deployment.rows("from-ord", "standby") == [("from-ord", "lhr2")]
        assert deployment.rows("on-lhr", "primary") == deployment.rows("from-ord", "primary") == []
        assert health == {"lhr2": 200, "ord1": 503}
