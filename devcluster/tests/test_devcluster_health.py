"""The front's health checks on a real LiteFS cluster: a killed node leaves the rotation, and comes back.

Before the front checked health, a node whose LiteFS was killed stayed in
rotation: its app server, on a dead mount, answered reads 500 and writes
503 (no primary known, after ``primary_wait``). Fly's proxy stops sending
traffic to a Machine whose health checks fail; so does the front.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import httpx
import pytest

from litefs_route_devcluster import DEFAULT_APP, wait_for
from tests.support import FORCE, ROOT

if TYPE_CHECKING:
    from litefs_route_devcluster.pytest_plugin import LiteFSClusterFactory

HEALTH = "/litefs/health"


@pytest.mark.litefs
def test_a_killed_node_leaves_the_rotation_and_returns_when_healthy(
    litefs_real_cluster: LiteFSClusterFactory,
) -> None:
    cluster = litefs_real_cluster(
        DEFAULT_APP, instances=3, lease="consul", app_dir=ROOT, health_path=HEALTH, health_interval=0.2
    )
    front = cluster.front
    front.wait_checked()
    assert front.in_rotation == ["node1", "node2", "node3"]
    killed = cluster.wait_primary()

    cluster.kill_node(killed)
    # Its app server still runs, on a dead mount: its own health check says so.
    assert httpx.get(cluster.url(killed) + HEALTH).status_code == 503
    survivor = cluster.wait_primary(timeout=30)
    assert survivor != killed
    wait_for(
        lambda: front.in_rotation == [i for i in cluster.ids if i != killed],
        timeout=20,
        message=f"{killed} stayed in rotation: {front.in_rotation}",
    )

    survivors = [i for i in cluster.ids if i != killed]
    assert f"in rotation: {', '.join(survivors)}; failing {HEALTH}: {killed}" in cluster.status()

    front.reset_stats()
    statuses: list[int] = []
    with httpx.Client(base_url=cluster.front_url, timeout=30) as client:
        for n in range(60):
            statuses.append(
                client.post("/entries", data={"text": f"after-kill-{n}-{uuid.uuid4().hex[:6]}"}).status_code
            )
            statuses.append(client.get("/").status_code)
    assert statuses == [303, 200] * 60
    # Every request reached the survivors (answered, or replayed to the primary), none the killed node.
    reached = set(front.served) | {event.from_instance for event in front.replays}
    assert reached == {i for i in cluster.ids if i != killed}

    cluster.start_node(killed)
    wait_for(lambda: killed in front.in_rotation, timeout=30, message=f"{killed} did not return to the rotation")
    cluster.wait_replicated(30)
    with httpx.Client(base_url=cluster.front_url, timeout=30) as client:
        page = client.get("/", headers={FORCE: killed})
    assert page.status_code == 200
    assert "after-kill-59-" in page.text  # caught up as a replica
