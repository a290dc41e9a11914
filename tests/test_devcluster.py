"""The dev cluster: front proxy semantics, LiteFS-format replication, end-to-end runs with real processes.

No mocks and no sleeps standing in for synchronisation: every wait is a
bounded poll on a condition (``wait_for``), and assertions are about the
order of events, not durations.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from litefs_route.devcluster import Cluster, FrontProxy, Replicator, port_open, wait_for
from litefs_route.devcluster.files import format_lag, format_position, write_lag, write_position, write_primary
from litefs_route.devcluster.proxy import parse_fly_replay
from litefs_route.mount import Role, parse_lag, parse_position, read_node_state, read_position

if TYPE_CHECKING:
    from litefs_route.devcluster.pytest_plugin import ClusterFactory


ROOT = Path(__file__).resolve().parents[1]
ASGI_APP = "tests.devcluster_apps.asgi_app:app"
WSGI_APP = "tests.devcluster_apps.wsgi_app:app"
FORCE = "fly-force-instance-id"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


# -- mount files ------------------------------------------------------------


def test_mount_files_have_litefs_formats(tmp_path: Path) -> None:
    folder = str(tmp_path)
    assert format_lag(0) == b"+000000000\n"
    assert format_lag(2147483647) == b"+2147483647"  # as real LiteFS shows it: cut to 11 bytes
    assert format_position(5, 0xABC) == b"0000000000000005/0000000000000abc\n"
    write_primary(folder, "node2")
    write_lag(folder, 42)
    write_position(folder, "app.db", 7, 9)
    assert _read(f"{folder}/.primary") == b"node2\n"
    assert parse_lag(_read(f"{folder}/.lag") or b"") == 42
    assert read_position(folder, "app.db") == parse_position(b"0000000000000007/0000000000000009\n")
    write_primary(folder, None)
    assert _read(f"{folder}/.primary") is None
    assert sorted(os.listdir(folder)) == [".lag", "app.db-pos"]  # no temporary files left
    with pytest.raises(ValueError, match="instance id"):
        write_primary(folder, "bad id\nx")


# -- replication, in-process ------------------------------------------------


@pytest.fixture
def replicator(tmp_path: Path) -> Iterator[Replicator]:
    rep = Replicator({n: str(tmp_path / n) for n in ("a", "b", "c")}, "a", lag=0.0).start()
    try:
        yield rep
    finally:
        rep.close()


def _write(path: str, sql: str, *params: object) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def _count(path: str, table: str = "t") -> int:
    conn = sqlite3.connect(path, timeout=5)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def test_replicas_copy_commits_and_refuse_writes(replicator: Replicator) -> None:
    primary_db = replicator.db_path("a")
    start = replicator.positions()["a"]
    _write(primary_db, "CREATE TABLE t (x)")
    _write(primary_db, "INSERT INTO t VALUES (1)")
    positions = replicator.wait_replicated()
    assert positions == {"a": start + 2, "b": start + 2, "c": start + 2}  # one TXID per commit
    for node in ("b", "c"):
        folder = replicator.folder(node)
        assert _count(replicator.db_path(node)) == 1
        with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
            _write(replicator.db_path(node), "INSERT INTO t VALUES (2)")
        assert _read(f"{folder}/.primary") == b"a\n"
        lag = parse_lag(_read(f"{folder}/.lag") or b"")
        assert lag is not None
        assert lag > 0
        state = read_node_state(folder, node)
        assert (state.role, state.primary_id) == (Role.REPLICA, "a")
        assert read_position(folder, "app.db") == read_position(replicator.folder("a"), "app.db")
    folder_a = replicator.folder("a")
    assert _read(f"{folder_a}/.primary") is None
    assert _read(f"{folder_a}/.lag") == b"+000000000\n"
    assert read_node_state(folder_a, "a").role is Role.PRIMARY
    pos = _read(f"{folder_a}/app.db-pos")
    assert pos is not None
    assert re.fullmatch(rb"[0-9a-f]{16}/[0-9a-f]{16}\n", pos)


def test_lag_holds_changes_back_until_it_passes(replicator: Replicator) -> None:
    _write(replicator.db_path("a"), "CREATE TABLE t (x)")
    replicator.wait_replicated()
    before = replicator.positions()["b"]
    replicator.set_lag(3600)
    _write(replicator.db_path("a"), "INSERT INTO t VALUES (1)")
    wait_for(lambda: replicator.positions()["a"] == before + 1, message="commit not noticed")
    # .lag grows while the replica waits; its copy and position stay where they were.
    lag_b = replicator.folder("b") + "/.lag"
    wait_for(lambda: (parse_lag(_read(lag_b) or b"") or 0) >= 20, message=".lag does not grow")
    assert replicator.positions()["b"] == before
    assert _count(replicator.db_path("b")) == 0
    replicator.set_lag(0)
    replicator.wait_replicated()
    assert _count(replicator.db_path("b")) == 1
    assert parse_lag(_read(lag_b) or b"") == 1


def test_failover_shows_no_primary_then_moves_writability(replicator: Replicator) -> None:
    _write(replicator.db_path("a"), "CREATE TABLE t (x)")
    replicator.wait_replicated()
    seen: list[tuple[str | None, ...]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            roles = tuple(read_node_state(replicator.folder(n), n).primary_id for n in ("a", "b", "c"))
            if not seen or seen[-1] != roles:
                seen.append(roles)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        wait_for(lambda: bool(seen))
        replicator.promote("b", handover=0.3)
        wait_for(lambda: seen[-1] == ("b", "b", "b"))
    finally:
        stop.set()
        watcher.join()
    # Each folder goes from "a" to "no primary" (all at once) to "b": never straight from a to b.
    assert seen[0] == ("a", "a", "a")
    assert (None, None, None) in seen
    assert seen.index((None, None, None)) < seen.index(("b", "b", "b"))
    for node in ("a", "b", "c"):
        state = read_node_state(replicator.folder(node), node)
        assert state.primary_id == "b"
    _write(replicator.db_path("b"), "INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        _write(replicator.db_path("a"), "INSERT INTO t VALUES (2)")
    replicator.wait_replicated()
    assert [_count(replicator.db_path(n)) for n in ("a", "b", "c")] == [1, 1, 1]


def test_no_primary_files_during_handover(replicator: Replicator) -> None:
    done = threading.Event()

    def promote() -> None:
        replicator.promote("c", handover=1)
        done.set()

    thread = threading.Thread(target=promote)
    thread.start()
    try:
        wait_for(lambda: replicator.primary is None)
        for node in ("a", "b", "c"):
            folder = replicator.folder(node)
            assert _read(f"{folder}/.primary") is None
            assert _read(f"{folder}/.lag") == b"+2147483647"
            assert read_node_state(folder, node).role is Role.NO_PRIMARY
        assert not done.is_set()
    finally:
        thread.join()
    assert replicator.primary == "c"


# -- front proxy, over in-process backends ------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Respond = Callable[["_BackendHandler", Seen], None]


@dataclass
class Backend:
    name: str
    respond: Respond
    seen: list[Seen] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return ("127.0.0.1", int(self.server.server_address[1]))


class _BackendHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backend: Backend

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle_one(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
        self.backend.seen.append(seen)
        self.backend.respond(self, seen)

    do_GET = do_POST = do_PUT = handle_one

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def backends() -> Iterator[Callable[[str, Respond], Backend]]:
    started: list[Backend] = []

    def make(name: str, respond: Respond) -> Backend:
        backend = Backend(name, respond)
        handler = type("Handler", (_BackendHandler,), {"backend": backend})
        backend.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        backend.server.daemon_threads = True
        threading.Thread(target=backend.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        assert backend.server is not None
        backend.server.shutdown()
        backend.server.server_close()


def _echo(handler: _BackendHandler, seen: Seen) -> None:
    payload = {"by": handler.backend.name, "method": seen.method, "path": seen.path, "body": seen.body.decode()}
    handler.reply(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def _replay_to(target: str, state: str = "s1") -> Respond:
    def respond(handler: _BackendHandler, seen: Seen) -> None:
        handler.reply(409, b"go elsewhere", {"fly-replay": f"instance={target};state={state}"})

    return respond


def test_parse_fly_replay() -> None:
    assert parse_fly_replay("instance=abc;state=x=1") == {"instance": "abc", "state": "x=1"}
    assert parse_fly_replay(" Region = ams ; elsewhere=true;junk") == {"region": "ams", "elsewhere": "true"}


def test_replay_resends_the_whole_request_with_replay_src(backends: Callable[[str, Respond], Backend]) -> None:
    a = backends("a", _replay_to("b", "litefs-route-hop-1"))
    b = backends("b", _echo)
    with FrontProxy({"a": a.address, "b": b.address}, regions={"a": "ams", "b": "lhr"}) as front:
        response = httpx.post(
            front.url + "/form?x=1&y=2",
            content=b"name=value",
            headers={FORCE: "a", "X-Custom": "kept", "Content-Type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 200
    assert response.json() == {"by": "b", "method": "POST", "path": "/form?x=1&y=2", "body": "name=value"}
    assert len(a.seen) == 1
    assert len(b.seen) == 1
    original, replayed = a.seen[0], b.seen[0]
    assert "fly-replay-src" not in original.headers
    assert re.fullmatch(
        r"instance=a;region=ams;t=[0-9]{16};state=litefs-route-hop-1", replayed.headers["fly-replay-src"]
    )
    assert replayed.headers["x-custom"] == "kept"
    assert replayed.headers["content-type"] == "application/x-www-form-urlencoded"
    assert replayed.headers["fly-request-id"] == original.headers["fly-request-id"]
    assert [(e.from_instance, e.to_instance, e.state, e.hop) for e in front.replays] == [
        ("a", "b", "litefs-route-hop-1", 1)
    ]
    assert front.replay_count == 1
    assert front.served == {"b": 1}


def test_replay_limit_is_ten_then_pa02(backends: Callable[[str, Respond], Backend]) -> None:
    a = backends("a", _replay_to("b"))
    b = backends("b", _replay_to("a"))
    with FrontProxy({"a": a.address, "b": b.address}) as front:
        response = httpx.post(front.url + "/loop", content=b"x", headers={FORCE: "a"})
    assert response.status_code == 502
    assert "replay limit" in response.text
    assert "PA02" in response.text
    assert response.headers["fly-devcluster-error"] == "PA02"
    assert len(a.seen) + len(b.seen) == 11  # the original and 10 replays
    assert front.replay_count == 10
    assert front.replays[-1].refused == "replay-limit"


def test_body_over_1mb_is_forwarded_but_never_replayed(backends: Callable[[str, Respond], Backend]) -> None:
    a = backends("a", _replay_to("b"))
    b = backends("b", _echo)
    big = b"x" * 1_000_001
    with FrontProxy({"a": a.address, "b": b.address}) as front:
        refused = httpx.post(front.url + "/upload", content=big, headers={FORCE: "a"})
        direct = httpx.post(front.url + "/upload", content=big, headers={FORCE: "b"})
        small = httpx.post(front.url + "/upload", content=b"x" * 1_000_000, headers={FORCE: "a"})
    assert refused.status_code == 502
    assert "too large to replay" in refused.text
    assert direct.status_code == 200
    assert len(direct.json()["body"]) == len(big)
    assert small.status_code == 200
    assert small.json()["by"] == "b"
    assert len(a.seen) == 2
    assert len(a.seen[0].body) == len(big)
    assert len(b.seen) == 2  # the direct one and the replayed small one


def test_force_instance_and_round_robin(backends: Callable[[str, Respond], Backend]) -> None:
    a = backends("a", _echo)
    b = backends("b", _echo)
    with FrontProxy({"a": a.address, "b": b.address}) as front, httpx.Client(base_url=front.url) as client:
        forced = {client.get("/", headers={FORCE: "b"}).json()["by"] for _ in range(6)}
        balanced = [client.get("/").json()["by"] for _ in range(6)]
        unknown = client.get("/", headers={FORCE: "zzz"})
    assert forced == {"b"}
    assert sorted(balanced) == ["a", "a", "a", "b", "b", "b"]
    assert unknown.status_code == 502


def test_stopped_instance_is_skipped_by_round_robin(backends: Callable[[str, Respond], Backend]) -> None:
    a = backends("a", _echo)
    with FrontProxy({"a": a.address, "gone": ("127.0.0.1", 1)}) as front:
        assert {httpx.get(front.url + "/").json()["by"] for _ in range(4)} == {"a"}
        assert httpx.get(front.url + "/", headers={FORCE: "gone"}).status_code == 502


def test_streaming_is_not_buffered(backends: Callable[[str, Respond], Backend]) -> None:
    gate = threading.Event()
    events: list[str] = []

    def stream(handler: _BackendHandler, seen: Seen) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"8\r\nchunk-1;\r\n")
        handler.wfile.flush()
        released = gate.wait(20)
        events.append("chunk 2 sent" if released else "gate timed out")
        handler.wfile.write(b"8\r\nchunk-2;\r\n0\r\n\r\n")

    a = backends("a", stream)
    with FrontProxy({"a": a.address}) as front:
        host, port = front.address
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", "/stream")
            response = conn.getresponse()
            first = response.read1(65536)
            events.append(f"client got {first.decode()}")
            gate.set()
            rest = response.read()
        finally:
            conn.close()
    assert first == b"chunk-1;"
    assert rest == b"chunk-2;"
    assert events == ["client got chunk-1;", "chunk 2 sent"]


# -- end to end, real processes ---------------------------------------------


def _cluster(factory: ClusterFactory, app: str = ASGI_APP, **options: object) -> Cluster:
    return factory(app, app_dir=ROOT, **options)


def _item(client: httpx.Client, instance: str, write_id: str) -> httpx.Response:
    return client.get(f"/item/{write_id}", headers={FORCE: instance})


def test_write_on_a_replica_runs_once_on_the_primary(litefs_cluster: ClusterFactory) -> None:
    cluster = _cluster(litefs_cluster, lag=3600)
    primary, replica = cluster.primary, cluster.replicas[0]
    assert primary == "node1"
    with httpx.Client(base_url=cluster.front_url) as client:
        response = client.post("/write", data={"id": "w1"}, headers={FORCE: replica})
        assert response.status_code == 200, response.text
        assert response.json() == {"id": "w1", "instance": primary}
        assert [(e.from_instance, e.to_instance) for e in cluster.front.replays] == [(replica, primary)]
        assert _item(client, primary, "w1").json()["instance"] == primary
        # The lag holds the write back from the replicas (as a client that did not
        # write sees them: no __txid cookie, so no read-your-writes wait)...
        client.cookies.clear()
        for other in cluster.replicas:
            assert _item(client, other, "w1").status_code == 404
        # ...until it passes.
        cluster.set_lag(0.2)
        for other in cluster.replicas:
            wait_for(lambda other=other: _item(client, other, "w1").status_code == 200, message=other)  # type: ignore[misc]
            assert _item(client, other, "w1").json() == {"id": "w1", "instance": primary, "read_on": other}
    conn = sqlite3.connect(cluster.db_path(primary))
    try:
        assert conn.execute("SELECT id, instance FROM writes").fetchall() == [("w1", primary)]
    finally:
        conn.close()


def test_redirect_after_write_with_no_lag(litefs_cluster: ClusterFactory) -> None:
    cluster = _cluster(litefs_cluster, lag=0)
    with httpx.Client(base_url=cluster.front_url) as client:
        posted = client.post("/write?redirect=1", data={"id": "r1"}, headers={FORCE: cluster.replicas[0]})
        assert posted.status_code == 303
        assert posted.headers["location"] == "/item/r1"
        cluster.wait_replicated()
        for instance in cluster.ids:
            assert client.get(posted.headers["location"], headers={FORCE: instance}).status_code == 200


def test_failover_under_traffic_loses_no_write_and_runs_none_twice(litefs_cluster: ClusterFactory) -> None:
    cluster = _cluster(litefs_cluster, lag=0.05)
    results: dict[str, tuple[int, dict[str, str]]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(base_url=cluster.front_url, timeout=30) as client:
            while not stop.is_set():
                write_id = uuid.uuid4().hex
                response = client.post("/write", data={"id": write_id})
                try:
                    payload = response.json()
                except ValueError:
                    payload = {"text": response.text}
                with lock:
                    results[write_id] = (response.status_code, payload)

    def ok_count() -> int:
        with lock:
            return sum(1 for status, _ in results.values() if status == 200)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for target in ("node2", "node3", "node1"):
            before = ok_count()
            wait_for(lambda before=before: ok_count() >= before + 15, timeout=30)  # type: ignore[misc]
            cluster.promote(target)
            assert cluster.primary == target
        before = ok_count()
        wait_for(lambda: ok_count() >= before + 15, timeout=30)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    cluster.wait_replicated()
    conn = sqlite3.connect(cluster.db_path(cluster.primary or "node1"))
    try:
        rows = dict(conn.execute("SELECT id, instance FROM writes").fetchall())
    finally:
        conn.close()
    ok = {write_id: payload for write_id, (status, payload) in results.items() if status == 200}
    failed = {write_id: (status, payload) for write_id, (status, payload) in results.items() if status != 200}
    assert not [p for _, p in failed.values() if p.get("error") == "duplicate"], "a write ran twice"
    assert {status for status, _ in failed.values()} <= {500, 502, 503}
    # Every acknowledged write is in the database exactly once (UNIQUE id), where it ran...
    assert {write_id: payload["instance"] for write_id, payload in ok.items()} == {
        write_id: rows[write_id] for write_id in ok
    }
    # ...and nothing else is: an error status means it did not commit.
    assert set(rows) == set(ok)
    assert {payload["instance"] for payload in ok.values()} == {"node1", "node2", "node3"}


def test_stopped_instance_rejoins(litefs_cluster: ClusterFactory) -> None:
    cluster = _cluster(litefs_cluster)
    node3 = cluster.instances["node3"]
    port, pid = node3.port, node3.pid
    with httpx.Client(base_url=cluster.front_url) as client:
        cluster.stop_instance("node3")
        assert not port_open("127.0.0.1", port)
        stopped_at = cluster.positions()["node3"]
        for n in range(4):  # round-robin skips the stopped instance
            assert client.post("/write", data={"id": f"s{n}"}).status_code == 200
        assert client.get("/whoami", headers={FORCE: "node3"}).status_code == 502
        assert cluster.positions()["node3"] == stopped_at  # its LiteFS is down too
        cluster.start_instance("node3")
        assert node3.running
        assert node3.pid != pid
        cluster.wait_replicated()
        assert client.get("/whoami", headers={FORCE: "node3"}).text == "node3"
        assert [_item(client, "node3", f"s{n}").status_code for n in range(4)] == [200] * 4


def test_wsgi_app_runs_under_a_wsgi_server(litefs_cluster: ClusterFactory) -> None:
    cluster = _cluster(litefs_cluster, WSGI_APP, instances=["alpha", "beta"], primary="beta")
    with httpx.Client(base_url=cluster.front_url) as client:
        assert client.get("/whoami", headers={FORCE: "alpha"}).text == "alpha"
        response = client.post("/write", data={"id": "x1"}, headers={FORCE: "alpha"})
        assert response.json() == {"id": "x1", "instance": "beta"}
        cluster.wait_replicated()
        assert _item(client, "alpha", "x1").json()["read_on"] == "alpha"


def test_streaming_through_the_cluster(litefs_cluster: ClusterFactory) -> None:
    cluster = _cluster(litefs_cluster, instances=2)
    host, port = cluster.front.address
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/stream", headers={FORCE: "node2"})
        response = conn.getresponse()
        assert response.read1(65536) == b"chunk-1;"  # before chunk 2 is even released
        assert httpx.post(cluster.front_url + "/release/2", headers={FORCE: "node2"}).status_code == 200
        assert response.read1(65536) == b"chunk-2;"
        assert httpx.post(cluster.front_url + "/release/3", headers={FORCE: "node2"}).status_code == 200
        assert response.read() == b"chunk-3;"
    finally:
        conn.close()


# -- clean-up -------------------------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_fixture_leaves_no_process_or_port_when_a_test_fails(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(
        textwrap.dedent(
            f"""
            import json
            def test_fails(litefs_cluster):
                cluster = litefs_cluster({ASGI_APP!r}, instances=2, app_dir={str(ROOT)!r})
                pids = list(cluster.pids().values())
                with open({str(record)!r}, "w") as f:
                    json.dump({{"pids": pids, "ports": cluster.ports()}}, f)
                assert False, "this test fails on purpose"
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "litefs_route.devcluster.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(test_file),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "this test fails on purpose" in result.stdout
    recorded = json.loads(record.read_text())
    assert len(recorded["pids"]) == 2
    assert len(recorded["ports"]) == 3
    assert all(_gone(pid) for pid in recorded["pids"])
    assert not [port for port in recorded["ports"] if port_open("127.0.0.1", port)]


def test_close_stops_everything(tmp_path: Path) -> None:
    cluster = Cluster(ASGI_APP, instances=2, app_dir=ROOT, base_dir=tmp_path)
    with cluster:
        pids, ports = list(cluster.pids().values()), cluster.ports()
        assert all(port_open("127.0.0.1", port) for port in ports)
    assert all(_gone(pid) for pid in pids)
    assert not [port for port in ports if port_open("127.0.0.1", port)]


# -- the command ------------------------------------------------------------------


def _start_cli(*args: str, stdin: int, stderr: int = subprocess.DEVNULL) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "litefs_route.devcluster",
            ASGI_APP,
            "--imitation",
            "--instances",
            "2",
            "--port",
            "0",
            "-q",
            *args,
        ],
        cwd=ROOT,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("ready: front "):
            break
    return process, lines


def test_cli_interactive_commands() -> None:
    process, lines = _start_cli(stdin=subprocess.PIPE)
    with process:
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            assert lines
            assert lines[-1].startswith("ready: front http://127.0.0.1:")
            assert any("fly-force-instance-id" in line for line in lines)  # what to try
            process.stdin.write("promote node2\nlag 0.5\nstatus\nquit\n")
            process.stdin.flush()
            out = process.stdout.read()
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    assert "primary is now node2" in out
    assert "lag is now 0.5 s" in out
    assert re.search(r"node2\s+primary\s+running", out)
    assert out.rstrip().endswith("stopped")


def test_cli_without_stdin_runs_until_sigterm() -> None:
    process, lines = _start_cli(stdin=subprocess.DEVNULL)
    with process:
        try:
            assert process.stdout is not None
            front_port = int(lines[-1].rsplit(":", 1)[1])
            assert process.stdout.readline() == "stdin closed; running until SIGINT or SIGTERM\n"
            assert port_open("127.0.0.1", front_port)  # still serving after stdin closed
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
            assert process.stdout.read().rstrip().endswith("stopped")
        finally:
            if process.poll() is None:
                process.kill()
    assert not port_open("127.0.0.1", front_port)


def test_cli_a_second_signal_does_not_cut_the_cleanup_short() -> None:
    """`timeout`, a supervisor or an impatient ^C often signal twice: the
    second one, landing while the instances are being stopped, must not kill
    the command before it has stopped them all."""
    process, lines = _start_cli(stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    instance_ports = [int(m[1]) for line in lines if (m := re.search(r"node\d\s.*http://127\.0\.0\.1:(\d+)", line))]
    with process:
        try:
            assert process.stderr is not None
            assert process.stdout is not None
            assert len(instance_ports) == 2
            process.send_signal(signal.SIGTERM)
            for line in process.stderr:
                if "stopping node1" in line:
                    break
            process.send_signal(signal.SIGTERM)  # during the clean-up
            assert process.wait(30) == 0
            assert process.stdout.read().rstrip().endswith("stopped")
        finally:
            if process.poll() is None:
                process.kill()
    assert not any(port_open("127.0.0.1", port) for port in instance_ports)


def test_cli_prompt_answers_mistakes_in_plain_words() -> None:
    process, _ = _start_cli(stdin=subprocess.PIPE)
    with process:
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            process.stdin.write("lag abc\npromote nodeX\nfrobnicate\nhelp\nquit\n")
            process.stdin.flush()
            out = process.stdout.read()
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    assert "error: lag takes a number of seconds, not 'abc'" in out
    assert "error: no instance 'nodeX'; instances: ['node1', 'node2']" in out
    assert "unknown command: 'frobnicate'" in out
    assert "Traceback" not in out
    assert "could not convert" not in out


def test_cli_ctrl_c_exits_130_after_cleaning_up() -> None:
    process, lines = _start_cli(stdin=subprocess.DEVNULL)
    with process:
        try:
            assert process.stdout is not None
            front_port = int(lines[-1].rsplit(":", 1)[1])
            assert process.stdout.readline() == "stdin closed; running until SIGINT or SIGTERM\n"
            process.send_signal(signal.SIGINT)
            assert process.wait(30) == 130
            assert process.stdout.read().rstrip().endswith("stopped")
        finally:
            if process.poll() is None:
                process.kill()
    assert not port_open("127.0.0.1", front_port)


def test_cli_busy_port_is_one_clear_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "litefs_route.devcluster", ASGI_APP, "--port", str(port)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert f"port {port} is in use" in done.stderr
    assert "--port 0" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("how", ["kill-9", "sighup"])
def test_cli_killed_or_hung_up_leaves_no_instance_and_no_folder(how: str) -> None:
    """The reaper stops the instances still working in the folder, then removes it."""
    process, lines = _start_cli(stdin=subprocess.DEVNULL)
    instance_ports = [int(m[1]) for line in lines if (m := re.search(r"node\d\s.*http://127\.0\.0\.1:(\d+)", line))]
    [base] = [m[1] for line in lines if (m := re.match(r"Logs: (\S+)/logs$", line.strip()))]
    with process:
        try:
            assert len(instance_ports) == 2
            assert os.path.isdir(base)
            process.send_signal(signal.SIGKILL if how == "kill-9" else signal.SIGHUP)
            assert process.wait(30) == (-signal.SIGKILL if how == "kill-9" else 128 + signal.SIGHUP)
        finally:
            if process.poll() is None:
                process.kill()
    wait_for(
        lambda: not any(port_open("127.0.0.1", port) for port in instance_ports) and not os.path.exists(base),
        timeout=20,
        message="instances or their folder outlived the command",
    )
