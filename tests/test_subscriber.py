"""Push, not poll: the middleware follows LiteFS's event stream, and falls back to the mount (real LiteFS)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from litefs_route import InstanceInfo, get_instance_info, wsgi
from litefs_route._consistency import Positions, PositionWatcher
from litefs_route._mount import NodeState, Role, read_position
from litefs_route._state_cache import StateCache
from litefs_route._subscriber import DEFAULT_API_URL, EventSubscriber, resolve_api_url
from litefs_route_devcluster import free_port
from tests.apps import flask_app, starlette_app
from tests.support import ROOT, logged, serve_under, serve_wsgi, wait_until

if TYPE_CHECKING:
    from litefs_route_devcluster.litefs import LiteFSCluster
    from litefs_route_devcluster.pytest_plugin import LiteFSClusterFactory

# A TTL no test outlives: a decision that follows a change was pushed, not re-read.
NEVER = 3600.0


@pytest.mark.parametrize(
    ("option", "env", "expected"),
    [
        (None, None, DEFAULT_API_URL),
        (None, "http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("http://127.0.0.1:4000", "http://127.0.0.1:3000", "http://127.0.0.1:4000"),
        ("off", None, None),
        (None, "off", None),
    ],
    ids=["default", "env", "option-over-env", "option-off", "env-off"],
)
def test_the_api_url(
    monkeypatch: pytest.MonkeyPatch, option: str | None, env: str | None, expected: str | None
) -> None:
    if env is not None:
        monkeypatch.setenv("LITEFS_API_URL", env)
    assert resolve_api_url(option) == expected


def test_a_bad_api_url_is_refused_when_the_middleware_is_built(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="litefs_api_url"):
        wsgi.PrimaryRoutingMiddleware(lambda e, s: [], litefs_dir=str(tmp_path), litefs_api_url="ftp://x")


def _middleware_on(cluster: LiteFSCluster, node: str, **options: Any) -> wsgi.PrimaryRoutingMiddleware:
    """A WSGI middleware over *node*'s mount, as *node*, around an app these tests never call."""
    return wsgi.PrimaryRoutingMiddleware(_no_app, litefs_dir=cluster.nodes[node].mount_dir, instance_id=node, **options)


def _no_app(environ: Any, start_response: Any) -> list[bytes]:
    raise AssertionError("only the middleware's routing is used")


def _read_waits_for_a_commit(cluster: LiteFSCluster, client: httpx.Client, positions: Positions) -> int:
    """node2 held back, a commit on node1: a GET on node2 with its cookie waits, then is answered by node2."""
    cluster.pause_replication("node2")
    try:
        _commit(cluster, "node1", value="ryw")
        target = cluster.position("node1")
        assert target is not None
        assert (cluster.position("node2") or 0) < target
        with ThreadPoolExecutor(1) as pool:
            read = pool.submit(client.get, "/", headers={"Cookie": f"__txid={target:016x}"})
            wait_until(lambda: positions.waiting == 1, what="the read to wait for its TXID")
            cluster.resume_replication("node2")
            response = read.result(30)
    finally:
        cluster.resume_replication("node2")
    assert (response.status_code, response.headers["fly-instance"]) == (200, "node2")
    return target


def _commit(cluster: LiteFSCluster, node: str, database: str = "app.db", value: str = "x") -> None:
    with sqlite3.connect(cluster.db_path(node, database)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
        db.execute("INSERT INTO t VALUES (?)", (value,))
    db.close()


@pytest.mark.litefs
def test_routing_follows_the_stream_without_reading_the_mount(
    litefs_real_cluster: LiteFSClusterFactory, adapter: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Stream up: decisions and read-your-writes waits on the stream's events; the mount is never read meanwhile."""
    caplog.set_level(logging.INFO, logger="litefs_route")
    cluster = litefs_real_cluster(instances=3, lease="static")
    _commit(cluster, "node1")
    cluster.wait_replicated()
    node2 = cluster.nodes["node2"]
    calls: list[str] = []
    options: dict[str, Any] = {
        "litefs_dir": node2.mount_dir,
        "instance_id": "node2",
        "database": "app.db",
        "cache_ttl": NEVER,
        "litefs_api_url": node2.api_url,
    }
    with (
        serve_under(adapter, flask_app(calls), starlette_app(calls), **options) as served,
        httpx.Client(base_url=served.url, timeout=30) as client,
    ):
        routing = served.routing
        subscriber, cache, positions = routing.subscriber, routing.cache, routing.positions
        assert subscriber is not None
        assert positions is not None
        assert client.get("/").status_code == 200  # the first read starts the stream
        wait_until(lambda: subscriber.up, what="the event stream to come up")
        # A first reading may be held back until its primary is established (0.1 s named without a break).
        wait_until(
            lambda: client.get("/").headers.get("fly-primary-instance") == "node1", what="node2 to route to node1"
        )
        mount_reads, position_reads = cache.reads, positions.reads
        gets_before = calls.count("GET /")

        for _ in range(20):
            assert client.get("/").status_code == 200
        assert client.post("/").headers["fly-replay"].startswith("instance=node1;")

        # Read-your-writes: a read ahead of node2 waits, and the tx event that brings its TXID wakes it.
        target = _read_waits_for_a_commit(cluster, client, positions)
        assert positions.watchers[0].reached(target)

        assert (cache.reads, positions.reads, positions.watchers[0].threads_started) == (mount_reads, position_reads, 0)
    assert calls.count("GET /") - gets_before == 21  # the 20 reads, and the one that waited for its TXID
    assert calls.count("POST /") == 0
    assert "event stream (%s) is up" % node2.api_url in caplog.text  # noqa: UP031 (the message's own format)


@pytest.mark.litefs
def test_a_stream_that_drops_falls_back_to_the_mount_and_recovers(
    litefs_real_cluster: LiteFSClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A handoff rerouted at once; LiteFS killed mid-flight: back on the mount; restarted: the stream trusted again."""
    caplog.set_level(logging.INFO, logger="litefs_route")
    cluster = litefs_real_cluster(instances=3, lease="consul")
    _commit(cluster, "node1")
    cluster.wait_replicated()
    node2 = cluster.nodes["node2"]
    middleware = _middleware_on(
        cluster,
        "node2",
        database="app.db",
        cache_ttl=NEVER,
        litefs_api_url=node2.api_url,
    )
    routing = middleware.routing
    subscriber, cache, positions = routing.subscriber, routing.cache, routing.positions
    assert subscriber is not None
    assert positions is not None
    # The first reading counts at once if node2's .lag shows it heard from node1 within 0.75 s (the
    # heartbeat comes every second), else once node1 was named for ESTABLISHED_AFTER.
    wait_until(lambda: cache.get().primary_id == "node1", what="node1 to be routed to")
    wait_until(lambda: subscriber.up, what="the event stream to come up")

    # A handoff: with a TTL of an hour, only the stream can tell.
    cluster.promote("node3")
    wait_until(lambda: cache.get().primary_id == "node3", what="the primaryChange event")
    assert cache.reads == 1

    cluster.kill_node("node2")
    wait_until(lambda: not subscriber.up, what="the drop to be seen")
    # Back on the mount: a dead mount is no primary, read every cache_ttl.
    wait_until(lambda: cache.get().role is Role.NO_PRIMARY, what="the dead mount to be read")
    assert "dropped" in caplog.text

    cluster.start_node("node2")
    wait_until(lambda: subscriber.up, timeout=30, what="the stream to be trusted again")
    reads = cache.reads
    _commit(cluster, "node3", value="after")
    target = cluster.wait_replicated()["node2"]
    wait_until(lambda: positions.watchers[0].reached(target), what="the tx event")
    # node2's LiteFS names node3 anew since its restart: a target once named for ESTABLISHED_AFTER.
    wait_until(lambda: cache.get().primary_id == "node3", what="node3 to be established again")
    assert cache.reads == reads
    assert subscriber.connections == 2
    assert "is back up" in caplog.text


@pytest.mark.litefs
def test_an_api_that_is_not_this_mounts_litefs_is_not_followed(
    litefs_real_cluster: LiteFSClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """node2's mount with node1's API (the primary's view): never trusted, routing stays on the mount."""
    caplog.set_level(logging.INFO, logger="litefs_route")
    cluster = litefs_real_cluster(instances=2, lease="static")
    subscriber = EventSubscriber(cluster.nodes["node1"].api_url, cluster.nodes["node2"].mount_dir)
    middleware = _middleware_on(
        cluster,
        "node2",
        cache_ttl=0,
        litefs_api_url="off",
    )
    subscriber.attach(middleware.routing.cache)
    # Routed on once established: at once if node2's .lag shows it heard from node1, else after
    # ESTABLISHED_AFTER (a replica that has not heard from its primary yet reads +2147483647).
    wait_until(lambda: middleware.routing.cache.get().primary_id == "node1", what="node1 to be routed to")
    wait_until(lambda: "not following LiteFS's event stream" in caplog.text, what="the mismatch to be logged")
    assert not subscriber.up
    assert middleware.routing.cache.get().role is Role.REPLICA


def test_an_unreachable_api_leaves_routing_on_the_mount(mount: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="litefs_route")
    url = f"http://127.0.0.1:{free_port()}"
    middleware = wsgi.PrimaryRoutingMiddleware(
        lambda e, s: [], litefs_dir=str(mount.path), instance_id="me", cache_ttl=0, litefs_api_url=url
    )
    routing = middleware.routing
    assert routing.subscriber is not None
    assert routing.cache.get().role is Role.PRIMARY
    wait_until(lambda: "is not reachable" in caplog.text, what="the first failure to be logged")
    mount.make_replica("other")
    # Routed on once named without a break for ESTABLISHED_AFTER (each get() reads the mount: cache_ttl=0).
    wait_until(lambda: routing.cache.get().primary_id == "other", what="routing to follow the mount")
    assert not routing.subscriber.up
    # Once for this API (another test's subscriber thread may still be logging about its own).
    assert caplog.text.count(f"({url}) is not reachable") == 1


def _send_queue(port: int) -> int:
    """Bytes queued in the sockets of the server on 127.0.0.1:*port* that their peers have not taken (Linux)."""
    queued = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()  # sl local_address rem_address st tx_queue:rx_queue ...
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "01":  # ESTABLISHED
            queued += int(fields[4].split(":")[0], 16)
    return queued


@pytest.mark.litefs
def test_litefs_closing_a_slow_subscriber(
    litefs_real_cluster: LiteFSClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """LiteFS drops a subscriber 1,024 events behind (once the sockets' buffers are full): it reconnects, re-reads."""
    from litefs_route_devcluster.litefs import TcpRelay

    caplog.set_level(logging.INFO, logger="litefs_route")
    cluster = litefs_real_cluster(instances=1, lease="static")
    node = cluster.nodes["node1"]
    databases = ["a.db", "b.db", "c.db", "d.db"]
    for database in databases:
        _commit(cluster, "node1", database)
    # A path to LiteFS that stops taking bytes: its send queue to us fills, then its 1,024-event channel.
    # Narrow, so that the queue holds a few hundred events, not the megabytes loopback's segments allow.
    relay = TcpRelay(("127.0.0.1", node.http_port), narrow=True)
    watcher = PositionWatcher(node.mount_dir, "a.db")
    subscriber = EventSubscriber(relay.url, node.mount_dir, quiet_after=NEVER)  # no /info while it stalls
    middleware = _middleware_on(cluster, "node1", cache_ttl=NEVER, litefs_api_url="off")
    subscriber.attach(middleware.routing.cache, [watcher])
    middleware.routing.cache.get()
    done = [0] * len(databases)
    enough = threading.Event()

    def commit(index: int, database: str) -> int:
        with sqlite3.connect(cluster.db_path("node1", database), isolation_level=None) as db:
            db.execute("PRAGMA journal_mode=wal")
            while not enough.is_set():
                db.execute("INSERT INTO t VALUES ('x')")
                done[index] += 1
        db.close()
        return done[index]

    # Until the send queue stopped growing 1,024 events ago (one event per commit), and a margin: from
    # then on every event waited in the channel, and the one after the 1,024th overflowed it.
    queued, grew_at = -1, 0

    def channel_overflowed() -> bool:
        nonlocal queued, grew_at
        now, commits = _send_queue(node.http_port), sum(done)
        if now != queued:
            queued, grew_at = now, commits
        return commits >= grew_at + 1024 + 256

    try:
        wait_until(lambda: subscriber.up, what="the event stream to come up")
        relay.pause()
        with ThreadPoolExecutor(len(databases)) as pool:
            committed = [pool.submit(commit, i, database) for i, database in enumerate(databases)]
            try:
                wait_until(channel_overflowed, timeout=100, what="LiteFS's queue and channel for us to fill")
            finally:
                enough.set()
            total = sum(f.result() for f in committed)
        assert subscriber.connections == 1
        relay.resume()
        wait_until(lambda: subscriber.connections == 2 and subscriber.up, timeout=60, what="the reconnection")
    finally:
        relay.close()
    logged(node.log_path, "event stream buffer exceeded")  # LiteFS's own word for it
    print(f"LiteFS dropped the slow subscriber after {total} commits ({queued} bytes queued in its socket)")
    position = read_position(node.mount_dir, "a.db")
    assert position is not None
    wait_until(lambda: watcher.last_known == position.txid, what="a.db's TXID re-read")
    assert "dropped" in caplog.text
    assert "is back up" in caplog.text


@pytest.mark.litefs
def test_status_confirms_the_mount_on_the_stream(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """`status` says where its answer comes from: the stream (agreeing with the mount), or the mount alone."""
    cluster = litefs_real_cluster(instances=2, lease="static")
    mount = cluster.nodes["node2"].mount_dir

    def status(api_url: str) -> tuple[dict[str, Any], str]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "litefs_route",
                "status",
                "--json",
                "--dir",
                mount,
                "--instance-id",
                "node2",
                "--api-url",
                api_url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(done.stdout), done.stderr

    report, _ = status(cluster.nodes["node2"].api_url)
    assert (report["role"], report["primary"], report["source"]) == ("replica", "node1", "events")
    report, warning = status(cluster.nodes["node1"].api_url)  # another node's LiteFS
    assert (report["role"], report["primary"], report["source"]) == ("replica", "node1", "mount")
    assert "is --api-url this mount's LiteFS?" in warning
    report, _ = status(f"http://127.0.0.1:{free_port()}")
    assert report["source"] == "mount"


# -- several databases in one mount ------------------------------------------------------------

DATABASES = ["app.db", "cache.db"]


def _writing_apps(mount: str) -> tuple[Any, Any]:
    """A WSGI and an ASGI app: POST /?db=a.db&db=b.db inserts a row into each database named; GET reads."""
    from urllib.parse import parse_qs

    def write(query: str) -> None:
        for database in parse_qs(query).get("db", []):
            with sqlite3.connect(os.path.join(mount, database)) as db:
                db.execute("INSERT INTO t VALUES ('x')")
            db.close()

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "POST":
            write(environ.get("QUERY_STRING", ""))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["method"] == "POST":
            write(scope["query_string"].decode())  # a test app: blocking is fine here
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return wsgi_app, asgi_app


def _cookies(response: httpx.Response) -> dict[str, str]:
    return dict(header.split(";")[0].split("=", 1) for header in response.headers.get_list("set-cookie"))


@pytest.mark.litefs
def test_read_your_writes_for_two_databases_in_one_mount(
    litefs_real_cluster: LiteFSClusterFactory, adapter: str
) -> None:
    """Each database a write changed gets its cookie; a replica read waits for every database in its cookies."""
    cluster = litefs_real_cluster(instances=3, lease="static")
    for database in DATABASES:
        with sqlite3.connect(cluster.db_path("node1", database)) as db:
            db.execute("CREATE TABLE t (v TEXT)")
        db.close()
        cluster.wait_replicated(database=database)

    def options(node: str) -> dict[str, Any]:
        info = cluster.nodes[node]
        return {
            "litefs_dir": info.mount_dir,
            "instance_id": node,
            "database": DATABASES,
            "litefs_api_url": info.api_url,
        }

    def pos(node: str, database: str) -> str:
        return f"{cluster.position(node, database) or 0:016x}"

    primary_apps = _writing_apps(cluster.nodes["node1"].mount_dir)
    replica_apps = _writing_apps(cluster.nodes["node2"].mount_dir)
    with (
        serve_under(adapter, *primary_apps, **options("node1")) as primary,
        serve_under(adapter, *replica_apps, **options("node2")) as replica,
        httpx.Client(timeout=30) as client,
    ):
        for served in (primary, replica):
            client.get(served.url)  # the first read starts the stream
        wait_until(lambda: all(s.routing.subscriber and s.routing.subscriber.up for s in (primary, replica)), what="up")

        only_cache = client.post(primary.url + "/?db=cache.db")
        assert _cookies(only_cache) == {"__txid_cache.db": pos("node1", "cache.db")}
        only_app = client.post(primary.url + "/?db=app.db")
        assert _cookies(only_app) == {"__txid": pos("node1", "app.db")}
        nothing = client.post(primary.url + "/")
        assert _cookies(nothing) == {}

        cluster.wait_replicated(database="app.db")
        cluster.wait_replicated(database="cache.db")
        cluster.pause_replication("node2")
        try:
            both = client.post(primary.url + "/?db=app.db&db=cache.db")
            cookies = _cookies(both)
            assert cookies == {"__txid": pos("node1", "app.db"), "__txid_cache.db": pos("node1", "cache.db")}
            positions = replica.routing.positions
            assert positions is not None
            header = "; ".join(f"{name}={value}" for name, value in cookies.items())
            with ThreadPoolExecutor(1) as pool:
                read = pool.submit(client.get, replica.url, headers={"Cookie": header})
                wait_until(lambda: positions.waiting >= 1, what="the read to wait")
                cluster.resume_replication("node2")
                response = read.result(30)
        finally:
            cluster.resume_replication("node2")
        assert (response.status_code, response.headers["fly-instance"]) == (200, "node2")
        assert positions.known() == (int(cookies["__txid"], 16), int(cookies["__txid_cache.db"], 16))

        # A cookie for cache.db ahead of the primary (lost writes): cleared there, app.db's untouched.
        ahead = client.get(primary.url, headers={"Cookie": f"__txid_cache.db={0xFFFF:016x}; __txid=0000000000000001"})
        assert ahead.headers.get_list("set-cookie") == ["__txid_cache.db=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"]


@pytest.mark.litefs
def test_each_gunicorn_worker_follows_its_own_stream_after_a_preload_fork(
    litefs_real_cluster: LiteFSClusterFactory,
) -> None:
    """The master's stream does not survive the fork: each worker starts its own, and follows a handoff on it."""
    cluster = litefs_real_cluster(instances=3, lease="consul")
    node2 = cluster.nodes["node2"]
    port = free_port()
    env = {
        **os.environ,
        "LITEFS_DIR": node2.mount_dir,
        "FLY_MACHINE_ID": "node2",
        "LITEFS_API_URL": node2.api_url,
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "gunicorn", "--preload", "-w", "2", "-b", f"127.0.0.1:{port}"]
    server = subprocess.Popen([*command, "tests.devcluster_apps.preload_app:app"], env=env, cwd=ROOT)
    workers: dict[int, dict[str, Any]] = {}

    def sampled(done: Callable[[dict[str, Any]], bool]) -> bool:
        """Ask both workers (two requests at once, each holding its sync worker); True once *done* holds for both."""
        try:
            with ThreadPoolExecutor(2) as pool:
                get = functools.partial(httpx.get, f"http://127.0.0.1:{port}/__stream?hold=0.3", timeout=5)
                reports = [f.result().json() for f in [pool.submit(get), pool.submit(get)]]
        except httpx.TransportError:
            return False  # not listening yet
        workers.update((report["pid"], report) for report in reports)
        return len(workers) == 2 and all(done(w) for w in workers.values())

    try:
        wait_until(lambda: sampled(lambda w: w["up"]), timeout=30, what=f"both workers' own streams: {workers}")
        assert all(w["primary"] == "node1" and w["connections"] == 1 for w in workers.values()), workers
        reads = {pid: w["reads"] for pid, w in workers.items()}
        cluster.promote("node3")
        wait_until(lambda: sampled(lambda w: w["primary"] == "node3"), timeout=30, what="both to follow the handoff")
        assert {pid: w["reads"] for pid, w in workers.items()} == reads  # pushed, not read
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.litefs
def test_the_background_threads_import_nothing(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """A thread that imports can be forked mid-import (gunicorn --preload): the worker keeps a half-made module.

    Seen as ``LookupError: unknown encoding: idna`` on every reconnection of
    a worker's stream: getaddrinfo() imported the codec in the master's thread.
    """
    cluster = litefs_real_cluster(instances=2, lease="static")
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    _commit(cluster, "node1")  # the database exists everywhere
    cluster.wait_replicated()
    script = [sys.executable, "-m", "tests.background_threads", node2.mount_dir, node2.api_url]
    result = subprocess.run(
        [*script, cluster.db_path("node1"), node1.api_url], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], result.stderr


class _FailingOnceCache(StateCache):
    """A cache whose first push fails, as a bug in what the stream feeds would."""

    failed = False

    def push(self, state: NodeState) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug")
        super().push(state)


@pytest.mark.litefs
def test_an_unexpected_error_in_the_thread_falls_back_and_retries(
    litefs_real_cluster: LiteFSClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = litefs_real_cluster(instances=1, lease="static")
    node = cluster.nodes["node1"]
    subscriber = EventSubscriber(node.api_url, node.mount_dir)
    cache = _FailingOnceCache(node.mount_dir, "node1", NEVER)
    subscriber.attach(cache)
    assert cache.get().role is Role.PRIMARY
    wait_until(lambda: subscriber.up, what="the stream, after the failure")
    assert cache.failed
    assert "the LiteFS event stream's thread failed" in caplog.text


@pytest.mark.litefs
def test_an_api_unreachable_from_the_start_routes_and_waits_on_the_mount(
    litefs_real_cluster: LiteFSClusterFactory, adapter: str
) -> None:
    """No stream ever: writes are replayed from the mount's reading, read-your-writes waits poll -pos."""
    cluster = litefs_real_cluster(instances=2, lease="static")
    _commit(cluster, "node1")
    cluster.wait_replicated()
    node2 = cluster.nodes["node2"]
    calls: list[str] = []
    options: dict[str, Any] = {
        "litefs_dir": node2.mount_dir,
        "instance_id": "node2",
        "database": "app.db",
        "litefs_api_url": f"http://127.0.0.1:{free_port()}",
    }
    with (
        serve_under(adapter, flask_app(calls), starlette_app(calls), **options) as served,
        httpx.Client(base_url=served.url, timeout=30) as client,
    ):
        positions = served.routing.positions
        assert positions is not None
        assert client.post("/").headers["fly-replay"].startswith("instance=node1;")
        _read_waits_for_a_commit(cluster, client, positions)
        assert served.routing.subscriber is not None
        assert not served.routing.subscriber.up
        assert positions.watchers[0].threads_started == 1  # the poller woke it


@pytest.mark.litefs
def test_a_middleware_built_while_the_stream_is_up_is_fed_at_once(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """The process's one subscriber brings a newly attached cache and watcher up to date: no mount reads after."""
    cluster = litefs_real_cluster(instances=2, lease="static")
    _commit(cluster, "node1")
    target = cluster.wait_replicated()["node2"]
    node2 = cluster.nodes["node2"]
    options: dict[str, Any] = {
        "litefs_dir": node2.mount_dir,
        "instance_id": "node2",
        "database": "app.db",
        "cache_ttl": 0,
        "litefs_api_url": node2.api_url,
    }
    first = wsgi.PrimaryRoutingMiddleware(lambda e, s: [], **options).routing
    first.cache.get()
    assert first.subscriber is not None
    wait_until(lambda: first.subscriber is not None and first.subscriber.up, what="the stream")

    second = wsgi.PrimaryRoutingMiddleware(lambda e, s: [], **options).routing
    assert second.subscriber is first.subscriber
    assert second.positions is not None
    watcher = second.positions.watchers[0]
    assert (watcher.pushed, watcher.last_known) == (True, target)
    for _ in range(5):
        assert second.cache.get().primary_id == "node1"  # a TTL of 0: any read would show
    assert second.cache.reads == 0


@pytest.mark.litefs
def test_a_stream_that_stalls_is_dropped(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """LiteFS's API behind a path that stops moving bytes: /info is asked when the stream is quiet, then dropped."""
    from litefs_route_devcluster.litefs import TcpRelay

    cluster = litefs_real_cluster(instances=3, lease="consul")
    node2 = cluster.nodes["node2"]
    relay = TcpRelay(("127.0.0.1", node2.http_port))
    try:
        middleware = _middleware_on(cluster, "node2", cache_ttl=0.05, litefs_api_url="off")
        cache = middleware.routing.cache
        subscriber = EventSubscriber(relay.url, node2.mount_dir, connect_timeout=0.5, quiet_after=0.2)
        subscriber.attach(cache)
        wait_until(lambda: cache.get().primary_id == "node1", what="node1 to be routed to")
        wait_until(lambda: subscriber.up, what="the stream")
        relay.pause()  # the open stream and /info both stall
        cluster.promote("node3")
        wait_until(lambda: not subscriber.up, what="the stalled stream to be dropped")
        wait_until(lambda: cache.get().primary_id == "node3", what="routing on the mount's reading")
    finally:
        relay.close()


@pytest.mark.litefs
def test_another_replicas_api_is_dropped_at_its_first_transaction(
    litefs_real_cluster: LiteFSClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """node2's API on node3's mount agrees at init (both replicas of node1); its first tx ahead of the mount ends it."""
    caplog.set_level(logging.INFO, logger="litefs_route")
    cluster = litefs_real_cluster(instances=3, lease="static")
    _commit(cluster, "node1")
    cluster.wait_replicated()
    middleware = _middleware_on(
        cluster,
        "node3",
        database="app.db",
        consistency_wait=0.3,
        litefs_api_url=cluster.nodes["node2"].api_url,  # the wrong node's
    )
    routing = middleware.routing
    subscriber, positions = routing.subscriber, routing.positions
    assert subscriber is not None
    assert positions is not None
    routing.cache.get()
    wait_until(lambda: subscriber.up, what="the stream (init agrees)")
    cluster.pause_replication("node3")
    try:
        # Ahead of this mount once: maybe this node's LiteFS after a failover that
        # lost writes; the TXID is held back, and the next one is checked too.
        _commit(cluster, "node1", value="ryw")
        _commit(cluster, "node1", value="ryw-2")
        target = cluster.position("node1")
        assert target is not None
        wait_until(lambda: not subscriber.up, what="the wrong stream to be dropped")
        assert not positions.watchers[0].reached(target - 1)  # neither TXID was taken
        statuses: list[str] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)

        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_COOKIE": f"__txid={target:016x}"}
        middleware(environ, start_response)
        assert statuses == ["409 Conflict"]  # waited, then replayed to the primary, which has the write
    finally:
        cluster.resume_replication("node3")
    assert "it is not this mount's LiteFS" in caplog.text


# -- a write waiting for a primary is woken by the push ------------------------------------


def test_a_push_wakes_whoever_waits_for_the_state_to_change(mount: Any) -> None:
    cache = StateCache(str(mount.path), "me", NEVER)
    electing = NodeState(Role.NO_PRIMARY, "me", None, detail="pushed: no primary")
    assert not cache.wait_for_change(electing, NEVER)  # not pushed: False at once, the caller polls
    cache.push(electing)
    with ThreadPoolExecutor(1) as pool:
        woken = pool.submit(cache.wait_for_change, electing, NEVER)
        wait_until(lambda: cache.waiting == 1, what="the waiter")
        cache.push(NodeState(Role.REPLICA, "me", "node9", detail="pushed: primary known"))
        assert woken.result(10) is True  # long before NEVER: the push woke it
    assert cache.reads == 0


def test_a_write_waiting_for_a_primary_is_answered_by_the_push(adapter: str, mount: Any) -> None:
    """Both adapters: a pushed election holds the write; the push that names a primary replays it (no mount read)."""
    calls: list[str] = []
    mount.make_no_primary()
    options: dict[str, Any] = {"litefs_dir": str(mount.path), "instance_id": "me", "primary_wait": 30}
    with (
        serve_under(adapter, flask_app(calls), starlette_app(calls), **options) as served,
        httpx.Client(base_url=served.url, timeout=10) as client,
    ):
        cache = served.routing.cache
        cache.push(NodeState(Role.NO_PRIMARY, "me", None, detail="pushed: no primary"))
        with ThreadPoolExecutor(1) as pool:
            write = pool.submit(client.post, "/")
            wait_until(lambda: cache.waiting == 1, what="the write to wait")
            cache.push(NodeState(Role.REPLICA, "me", "node9", detail="pushed: primary known"))
            response = write.result(10)  # well before primary_wait (30 s)
        assert (response.status_code, response.headers["fly-replay"].split(";")[0]) == (409, "instance=node9")
        assert cache.reads == 0
    assert calls == []


class _FreezingRelay:
    """Relays to *target*; freeze() stops the connections open at that moment for good (new ones flow)."""

    def __init__(self, target: tuple[str, int]) -> None:
        import socket

        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.flows: list[threading.Event] = []
        self.sockets: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def freeze(self) -> None:
        for flowing in self.flows:
            flowing.clear()

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()

    def _accept(self) -> None:
        import socket

        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
                self.sockets += [client, upstream]
                flowing = threading.Event()
                flowing.set()
                self.flows.append(flowing)
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(source, sink, flowing), daemon=True).start()

    @staticmethod
    def _pump(source: Any, sink: Any, flowing: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not flowing.is_set():
                    return  # frozen: nothing more goes through, the socket stays open
                sink.sendall(data)


@pytest.mark.litefs
def test_a_frozen_stream_is_dropped_even_while_the_api_answers(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """Only the stream's connection stops (/info and /metrics answer): its TXIDs fall behind /metrics, it is dropped."""
    cluster = litefs_real_cluster(instances=2, lease="static")
    _commit(cluster, "node1")
    cluster.wait_replicated()
    node2 = cluster.nodes["node2"]
    relay = _FreezingRelay(("127.0.0.1", node2.http_port))
    try:
        middleware = _middleware_on(cluster, "node2", database="app.db", cache_ttl=NEVER, litefs_api_url="off")
        positions = middleware.routing.positions
        assert positions is not None
        subscriber = EventSubscriber(relay.url, node2.mount_dir, quiet_after=0.2)
        subscriber.attach(middleware.routing.cache, positions.watchers)
        middleware.routing.cache.get()
        wait_until(lambda: subscriber.up, what="the stream")
        relay.freeze()
        for value in ("a", "b", "c"):
            _commit(cluster, "node1", value=value)
        target = cluster.wait_replicated()["node2"]
        wait_until(lambda: not subscriber.up, what="the frozen stream to be dropped")
        assert positions.wait((target,), 10)  # polled again, the read is woken
    finally:
        relay.close()


@pytest.mark.litefs
def test_a_subscriber_whose_middlewares_are_gone_ends_even_while_quiet(
    litefs_real_cluster: LiteFSClusterFactory,
) -> None:
    import gc

    from litefs_route._subscriber import subscriber_for

    cluster = litefs_real_cluster(instances=1, lease="static")
    node = cluster.nodes["node1"]
    subscriber = subscriber_for(node.api_url, node.mount_dir)
    subscriber.quiet_after = 0.1
    cache = StateCache(node.mount_dir, "node1", NEVER)
    subscriber.attach(cache)
    cache.get()
    wait_until(lambda: subscriber.up, what="the stream")
    del cache
    gc.collect()
    wait_until(lambda: subscriber_for(node.api_url, node.mount_dir) is not subscriber, what="the subscriber to end")


@pytest.mark.litefs
def test_the_health_check_on_real_litefs(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """The primary and an in-sync replica pass; a node whose LiteFS died fails (its .lag cannot be read)."""
    cluster = litefs_real_cluster(instances=2, lease="static")
    _commit(cluster, "node1")
    cluster.wait_replicated()

    def check(node: str) -> tuple[str, bytes]:
        middleware = wsgi.PrimaryRoutingMiddleware(
            _no_app,
            litefs_dir=cluster.nodes[node].mount_dir,
            instance_id=node,
            health_path="/litefs/health",
            litefs_api_url=cluster.nodes[node].api_url,
        )
        statuses: list[str] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)

        body = b"".join(middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/litefs/health"}, start_response))
        return statuses[0], body

    assert check("node1") == ("200 OK", b"OK\n")
    assert check("node2") == ("200 OK", b"OK\n")
    cluster.kill_node("node2")
    status, body = check("node2")
    assert status == "503 Service Unavailable"
    assert body.startswith(b"Replication lag exceeded: replication lag unknown")


@pytest.mark.litefs
def test_get_instance_info_says_whether_this_node_is_a_lease_candidate(
    litefs_real_cluster: LiteFSClusterFactory,
) -> None:
    """From LiteFS's /info: asked now outside a request, as the stream came up inside one; unknown without the API."""
    cluster = litefs_real_cluster(instances=2, lease="static")  # a static lease: only node1 is a candidate
    seen: list[InstanceInfo] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        seen.append(get_instance_info())
        start_response("200 OK", [])
        return [b""]

    for node_id, expected in (("node1", True), ("node2", False)):
        node = cluster.nodes[node_id]
        where: dict[str, Any] = {"litefs_dir": node.mount_dir, "instance_id": node_id, "litefs_api_url": node.api_url}
        assert get_instance_info(**where).candidate is expected
        assert get_instance_info(**{**where, "litefs_api_url": "off"}).candidate is None
        middleware = wsgi.PrimaryRoutingMiddleware(app, **where)
        subscriber = middleware.routing.subscriber
        assert subscriber is not None
        middleware.routing.cache.get()
        wait_until(lambda: subscriber.up, what="the stream")  # noqa: B023 (used at once)
        with serve_wsgi(middleware) as url:
            assert httpx.get(url).status_code == 200
        assert seen[-1].candidate is expected
        assert seen[-1].current_instance == node_id
