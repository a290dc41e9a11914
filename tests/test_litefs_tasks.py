"""``call_on_primary`` from a replica of three real LiteFS nodes (marker ``litefs``).

The app (``tests/devcluster_apps/tasks_app.py``) serves the task endpoint
inside its middleware on every node; the test process is the caller on
node2, a replica. The ``runs`` table counts how many times a task ran.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from litefs_route import TaskClient, TaskFailed, TaskMayHaveRun, TaskRefused
from litefs_route._forwarding import ForwardURL
from litefs_route_devcluster.cluster import free_port
from tests.support import wait_until

if TYPE_CHECKING:
    from litefs_route_devcluster.litefs import LiteFSCluster
    from litefs_route_devcluster.pytest_plugin import LiteFSClusterFactory

pytestmark = pytest.mark.litefs

SECRET = "tasks-test-secret-0123456789"
CALLER = "node2"


@pytest.fixture(params=["wsgi_app", "asgi_app"])
def cluster(litefs_real_cluster: LiteFSClusterFactory, request: pytest.FixtureRequest) -> LiteFSCluster:
    return litefs_real_cluster(
        f"tests.devcluster_apps.tasks_app:{request.param}", instances=3, lease="static", env={"TASKS_SECRET": SECRET}
    )


def client(cluster: LiteFSCluster, forward_url: ForwardURL | None = None, secret: str = SECRET) -> TaskClient:
    return TaskClient(
        forward_url=forward_url or cluster.url,
        forward_secret=secret,
        litefs_dir=cluster.mount_dir(CALLER),
        instance_id=CALLER,
        litefs_api_url=cluster.nodes[CALLER].api_url,
        timeout=20.0,
    )


def runs(cluster: LiteFSCluster, node: str, label: str) -> list[tuple[int, str]]:
    """The rows the task wrote for *label*, as *node*'s copy of the database has them."""
    if not os.path.exists(cluster.db_path(node)):
        return []  # no task wrote yet
    with contextlib.closing(sqlite3.connect(f"file:{cluster.db_path(node)}?mode=ro", uri=True)) as db:
        try:
            return [(int(i), str(n)) for i, n in db.execute("SELECT id, node FROM runs WHERE label = ?", (label,))]
        except sqlite3.OperationalError:  # no table yet: nothing ran
            return []


class DroppingProxy:
    """Relays one request to the primary, reads the primary's whole answer, then drops the connection.

    The caller has sent its request and gets no answer: the task ran, and the caller cannot know.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.requests = 0
        self.answered = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    @staticmethod
    def _message(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            0,
        )
        while len(body) < length:
            body += conn.recv(65536)
        return head + b"\r\n\r\n" + body

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = self._message(conn)
                self.requests += 1
                with socket.create_connection(self.upstream) as up:
                    up.sendall(request)
                    self._message(up)
                self.answered.set()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dropping(cluster: LiteFSCluster) -> Iterator[DroppingProxy]:
    proxy = DroppingProxy(cluster.url("node1"))
    yield proxy
    proxy.close()


def test_a_replica_runs_a_task_once_on_the_primary_and_reads_its_write_at_once(cluster: LiteFSCluster) -> None:
    label = uuid.uuid4().hex
    result = client(cluster).call("add_row", label=label)
    assert result["node"] == "node1"
    # Returned only once the caller's node replicated it: read here, at once, no wait.
    assert runs(cluster, CALLER, label) == [(result["id"], "node1")]
    label = uuid.uuid4().hex
    result = client(cluster).call("add_row_async", label=label)
    assert runs(cluster, CALLER, label) == [(result["id"], "node1")]


def test_a_connection_that_failed_before_sending_is_retried_and_the_task_runs_once(cluster: LiteFSCluster) -> None:
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: the connection fails before a byte is sent
    asked: list[str] = []

    def forward_url(instance: str) -> str:
        asked.append(instance)
        return refused if len(asked) == 1 else cluster.url(instance)

    label = uuid.uuid4().hex
    result = client(cluster, forward_url).call("add_row", label=label)
    assert asked == ["node1", "node1"]
    assert runs(cluster, CALLER, label) == [(result["id"], "node1")]


def test_a_connection_lost_after_sending_is_may_have_run_and_never_retried(
    cluster: LiteFSCluster, dropping: DroppingProxy
) -> None:
    label = uuid.uuid4().hex
    with pytest.raises(TaskMayHaveRun, match="may have run on node1"):
        client(cluster, lambda instance: dropping.url).call("add_row", label=label)
    assert dropping.answered.is_set()
    assert dropping.requests == 1
    # It did run, once: the primary has it, and so will the caller's node.
    wait_until(lambda: len(runs(cluster, CALLER, label)) == 1, timeout=20, what="the write replicated")
    assert len(runs(cluster, "node1", label)) == 1


def test_a_wrong_secret_an_unknown_name_and_no_secret_are_refused(cluster: LiteFSCluster) -> None:
    label = uuid.uuid4().hex
    with pytest.raises(TaskRefused, match=r"\(403\)") as refused:
        client(cluster, secret="not-the-cluster-secret-000").call("add_row", label=label)
    assert refused.value.status == 403
    with pytest.raises(TaskRefused, match="no task named 'nope'") as unknown:
        client(cluster).call("nope", label=label)
    assert unknown.value.status == 404
    # Straight to the primary's endpoint, without the forward secret: the middleware would run it as any write.
    answer = httpx.post(
        cluster.url("node1") + "/_litefs_route/tasks/add_row",
        json={"label": label},
        headers={"litefs-route-task-key": uuid.uuid4().hex},
        timeout=10,
    )
    assert answer.status_code == 403
    assert SECRET not in answer.text
    with pytest.raises(TaskFailed, match="RuntimeError: the task's own error"):
        client(cluster).call("boom")
    assert runs(cluster, "node1", label) == []
