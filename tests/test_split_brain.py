"""Two real nodes that each believe the other is primary, behind the dev
cluster's imitation of Fly's edge proxy.

This is the failover window the loop protection exists for: node A's mount
names B, B's names A (each `.primary` written in LiteFS's format). Without
a replay counter, the edge would bounce a write between them ten times and
answer a bare 502. litefs-route counts its replays in fly-replay's `state`,
and answers 503 + Retry-After after ``max_replays`` (3): the app never runs
on either node, and the edge's own limit is never reached. Once the mounts
agree again, the same write goes through exactly once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from litefs_route_devcluster import FrontProxy
from tests.apps import flask_app, starlette_app
from tests.support import Mount, serve_under

A = "node-a"
B = "node-b"
FORCE = "fly-force-instance-id"


@contextlib.contextmanager
def _node(adapter: str, instance_id: str, mount: Mount, calls: list[str]) -> Iterator[tuple[str, int]]:
    # cache_ttl=1 (the default): replayed requests must read fresh state by
    # themselves; nothing here relies on the cache being off.
    apps = flask_app(calls), starlette_app(calls)
    with serve_under(adapter, *apps, instance_id=instance_id, litefs_dir=str(mount.path)) as served:
        yield served.address


def test_nodes_naming_each_other_answer_503_before_the_edge_gives_up(adapter: str, tmp_path: Path) -> None:
    mount_a, mount_b = Mount(tmp_path / "a"), Mount(tmp_path / "b")
    mount_a.make_replica(B)
    mount_b.make_replica(A)
    calls_a: list[str] = []
    calls_b: list[str] = []
    with (
        _node(adapter, A, mount_a, calls_a) as addr_a,
        _node(adapter, B, mount_b, calls_b) as addr_b,
        FrontProxy({A: addr_a, B: addr_b}) as front,
        httpx.Client(base_url=front.url, timeout=30) as client,
    ):
        response = client.post("/", data={"entry": "hello"}, headers={FORCE: A})

        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert "replayed 3 times" in response.text
        assert "fly-replay" not in response.headers
        # A -> B -> A -> B, each replay counted in the state it carried; B
        # answered the third replay itself, long before the edge's tenth.
        hops = [(e.from_instance, e.to_instance, e.state, e.refused) for e in front.replays]
        assert hops == [
            (A, B, "litefs-route-hop-1", None),
            (B, A, "litefs-route-hop-2", None),
            (A, B, "litefs-route-hop-3", None),
        ]
        assert front.served == {B: 1}
        assert calls_a == calls_b == []  # the write ran nowhere

        # The election settles on B: the same write now runs exactly once, there.
        mount_b.make_primary()
        response = client.post("/", data={"entry": "hello"}, headers={FORCE: A})
        assert response.status_code == 200
        assert response.headers["fly-instance"] == B
        assert response.headers["fly-primary-instance"] == B
        assert calls_a == []
        assert calls_b == ["POST /"]
        assert [(e.from_instance, e.to_instance, e.state) for e in front.replays[3:]] == [(A, B, "litefs-route-hop-1")]
