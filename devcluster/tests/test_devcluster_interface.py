"""The two dev clusters share one interface, :class:`DevCluster`: the same calls drive either.

``_fail_over_under_writes`` is typed to take the protocol, and mypy checks
each call below with the imitation (:class:`Cluster`) and with real LiteFS
(:class:`LiteFSCluster`); the same code then runs against both.
"""

from __future__ import annotations

import inspect
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest

from litefs_route_devcluster import Cluster, DevCluster
from litefs_route_devcluster.litefs import LiteFSCluster
from tests.support import FORCE, ROOT

if TYPE_CHECKING:
    from litefs_route_devcluster.pytest_plugin import ClusterFactory, LiteFSClusterFactory

APP = "tests.devcluster_apps.wsgi_app:app"
#: Every method the protocol names (its attributes are data, checked by mypy alone).
METHODS = [
    name
    for name, member in vars(DevCluster).items()
    if (callable(member) and not name.startswith("_")) or name in ("__enter__", "__exit__")
]
PROPERTIES = [name for name, member in vars(DevCluster).items() if isinstance(member, property)]


def _write(client: httpx.Client, write_id: str) -> dict[str, object]:
    response = client.post("/write", data={"id": write_id})
    assert response.status_code == 200, response.text
    payload: dict[str, object] = response.json()
    return payload


def _fail_over_under_writes(cluster: DevCluster) -> None:
    """The same story on either cluster: promote, stop, start, kill; no write lost, each on the primary."""
    first = cluster.wait_primary()
    assert cluster.primary == first
    assert sorted(cluster.replicas) == sorted(i for i in cluster.ids if i != first)
    other = next(i for i in cluster.ids if i != first)
    with httpx.Client(base_url=cluster.front_url, timeout=30) as client:
        assert _write(client, "before")["instance"] == first

        cluster.promote(other, timeout=30)
        assert cluster.primary == other
        assert _write(client, "after-promote")["instance"] == other

        cluster.stop_node(first)
        assert cluster.wait_primary() == other
        cluster.start_node(first)
        positions = cluster.wait_replicated(30)
        assert positions == cluster.positions()
        assert len(set(positions.values())) == 1  # every copy at the same TXID

        cluster.kill_node(other)
        third = cluster.wait_primary(timeout=30)
        assert third != other
        assert _write(client, f"after-kill-{uuid.uuid4().hex[:6]}")["instance"] == third
        page = client.get("/item/before", headers={FORCE: third})
        assert page.status_code == 200, "a write replicated before the kill survives it"
    assert cluster.db_path(third).startswith(cluster.base_dir)
    assert cluster.db_path(third).endswith(cluster.database)
    assert cluster.url(third) == cluster.instances[third].url
    assert third in cluster.status()


def test_both_clusters_have_the_protocol_s_signatures() -> None:
    assert {"promote", "kill_node", "stop_node", "start_node", "wait_primary"} <= set(METHODS)
    for name in METHODS:
        protocol = inspect.signature(getattr(DevCluster, name))
        for cls in (Cluster, LiteFSCluster):
            implemented = inspect.signature(getattr(cls, name))
            # Parameters alike; the return annotation may name the class itself (start, __enter__).
            assert list(implemented.parameters.values()) == list(protocol.parameters.values()), (cls, name)
    for name in PROPERTIES:
        for cls in (Cluster, LiteFSCluster):
            assert isinstance(getattr(cls, name), property), (cls, name)


def test_the_imitation_is_a_dev_cluster(litefs_cluster: ClusterFactory) -> None:
    _fail_over_under_writes(litefs_cluster(APP, instances=3, app_dir=ROOT))


@pytest.mark.litefs
def test_real_litefs_is_a_dev_cluster(litefs_real_cluster: LiteFSClusterFactory) -> None:
    _fail_over_under_writes(litefs_real_cluster(APP, instances=3, lease="consul", app_dir=ROOT))
