"""The dev cluster (``devcluster.cluster``) end to end, with real processes: replays, lag, failover, restarts.

No mocks and no sleeps standing in for synchronisation: every wait is a
bounded poll on a condition (``wait_for``), and assertions are about the
order of events, not durations.
"""

from __future__ import annotations

import http.client
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from litefs_route_devcluster import Cluster, port_open, wait_for
from tests.support import ASGI_APP, FORCE, ROOT, process_gone

if TYPE_CHECKING:
    from litefs_route_devcluster.pytest_plugin import ClusterFactory


WSGI_APP = "tests.devcluster_apps.wsgi_app:app"


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


def test_close_stops_everything(tmp_path: Path) -> None:
    cluster = Cluster(ASGI_APP, instances=2, app_dir=ROOT, base_dir=tmp_path)
    with cluster:
        pids, ports = list(cluster.pids().values()), cluster.ports()
        assert all(port_open("127.0.0.1", port) for port in ports)
    assert all(process_gone(pid) for pid in pids)
    assert not [port for port in ports if port_open("127.0.0.1", port)]
