"""pytest fixtures for the dev cluster.

Enable with ``pytest_plugins = ["litefs_route.devcluster.pytest_plugin"]`` in
your top-level ``conftest.py`` (or ``-p litefs_route.devcluster.pytest_plugin``).

``litefs_cluster`` is a factory: call it with :class:`Cluster`'s arguments;
every cluster it started is shut down (process groups killed, ports closed)
when the test ends, whether it passed or failed::

    def test_write_lands_on_primary(litefs_cluster):
        cluster = litefs_cluster("myapp:app", instances=3, lag=0.2)
        ...

``litefs_front_proxy`` is the same for a bare :class:`FrontProxy` over
servers you run yourself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from .cluster import Cluster
from .proxy import FrontProxy

__all__ = ["ClusterFactory", "FrontProxyFactory", "litefs_cluster", "litefs_front_proxy"]


class ClusterFactory(Protocol):
    def __call__(self, app: str = ..., **options: Any) -> Cluster: ...


class FrontProxyFactory(Protocol):
    def __call__(self, instances: Mapping[str, tuple[str, int]], **options: Any) -> FrontProxy: ...


@pytest.fixture
def litefs_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """A factory of started :class:`Cluster` objects, all closed at teardown."""
    clusters: list[Cluster] = []

    def factory(app: str = "examples.starlette_app.app:app", **options: Any) -> Cluster:
        options.setdefault("base_dir", tmp_path / f"devcluster-{len(clusters)}")
        cluster = Cluster(app, **options)
        clusters.append(cluster)
        return cluster.start()

    try:
        yield factory
    finally:
        for cluster in reversed(clusters):
            cluster.close()


@pytest.fixture
def litefs_front_proxy() -> Iterator[FrontProxyFactory]:
    """A factory of started :class:`FrontProxy` objects, all closed at teardown."""
    proxies: list[FrontProxy] = []

    def factory(instances: Mapping[str, tuple[str, int]], **options: Any) -> FrontProxy:
        proxy = FrontProxy(instances, **options)
        proxies.append(proxy)
        return proxy.start()

    try:
        yield factory
    finally:
        for proxy in reversed(proxies):
            proxy.close()
