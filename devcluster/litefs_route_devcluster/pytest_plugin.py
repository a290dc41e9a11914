"""pytest fixtures for the dev cluster.

Installing ``litefs-route-devcluster`` enables them in every pytest run (a
``pytest11`` entry point); ``-p no:litefs_route_devcluster`` turns them off.

``litefs_cluster`` is a factory: call it with :class:`Cluster`'s arguments;
every cluster it started is shut down (process groups killed, ports closed)
when the test ends, whether it passed or failed::

    def test_write_lands_on_primary(litefs_cluster):
        cluster = litefs_cluster("myapp:app", instances=3, lag=0.2)
        ...

``litefs_front_proxy`` is the same for a bare :class:`FrontProxy` over
servers you run yourself.

``litefs_real_cluster`` is the same for :class:`LiteFSCluster`: real LiteFS
nodes on FUSE mounts. Where LiteFS cannot run (no FUSE, no binary, not
Linux) the test is skipped with the reason, unless ``LITEFS_REQUIRED=1`` is
set (as the project's CI does): then it fails, so a machine that should run
LiteFS never passes by skipping::

    @pytest.mark.litefs
    def test_failover(litefs_real_cluster):
        cluster = litefs_real_cluster("myapp:app", instances=3, lease="consul")
        cluster.kill_node(cluster.primary)
        ...

``postgres_pair`` is the same for :class:`PostgresPair`: a real PostgreSQL
primary and streaming hot standby on 127.0.0.1. Where PostgreSQL's server
binaries are missing the test is skipped with the reason, unless
``POSTGRES_REQUIRED=1`` is set (as the project's CI does): then it fails::

    @pytest.mark.postgres
    def test_read_after_write(postgres_pair):
        pair = postgres_pair()
        pair.pause_replay()
        ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from .cluster import DEFAULT_APP, Cluster
from .litefs import LiteFSCluster, litefs_unavailable
from .postgres import PostgresPair, postgres_unavailable
from .proxy import FrontProxy

__all__ = [
    "ClusterFactory",
    "FrontProxyFactory",
    "LiteFSClusterFactory",
    "PostgresPairFactory",
    "litefs_cluster",
    "litefs_front_proxy",
    "litefs_real_cluster",
    "postgres_pair",
    "require_litefs",
    "require_postgres",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "litefs: runs real LiteFS nodes (FUSE mounts); see litefs_real_cluster")
    config.addinivalue_line("markers", "postgres: runs a real PostgreSQL primary and hot standby; see postgres_pair")


class ClusterFactory(Protocol):
    def __call__(self, app: str = ..., **options: Any) -> Cluster: ...


class LiteFSClusterFactory(Protocol):
    def __call__(self, app: str | None = ..., **options: Any) -> LiteFSCluster: ...


class PostgresPairFactory(Protocol):
    def __call__(self, **options: Any) -> PostgresPair: ...


class FrontProxyFactory(Protocol):
    def __call__(self, instances: Mapping[str, tuple[str, int]], **options: Any) -> FrontProxy: ...


class _Closable(Protocol):
    def close(self) -> None: ...


@contextlib.contextmanager
def _closed_at_exit() -> Iterator[list[_Closable]]:
    """A list to put what a fixture started in: all of it is closed, newest first, however the test ended."""
    started: list[_Closable] = []
    try:
        yield started
    finally:
        for thing in reversed(started):
            thing.close()


@pytest.fixture
def litefs_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """A factory of started :class:`Cluster` objects, all closed at teardown."""
    with _closed_at_exit() as clusters:

        def factory(app: str = DEFAULT_APP, **options: Any) -> Cluster:
            options.setdefault("base_dir", tmp_path / f"devcluster-{len(clusters)}")
            cluster = Cluster(app, **options)
            clusters.append(cluster)
            return cluster.start()

        yield factory


@pytest.fixture
def litefs_front_proxy() -> Iterator[FrontProxyFactory]:
    """A factory of started :class:`FrontProxy` objects, all closed at teardown."""
    with _closed_at_exit() as proxies:

        def factory(instances: Mapping[str, tuple[str, int]], **options: Any) -> FrontProxy:
            proxy = FrontProxy(instances, **options)
            proxies.append(proxy)
            return proxy.start()

        yield factory


def require_litefs() -> None:
    """Skip the calling test where real LiteFS cannot run; fail instead under ``LITEFS_REQUIRED=1``."""
    reason = litefs_unavailable()
    if reason is None:
        return
    if os.environ.get("LITEFS_REQUIRED", "") not in ("", "0"):
        pytest.fail(f"LITEFS_REQUIRED is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def litefs_real_cluster(tmp_path: Path) -> Iterator[LiteFSClusterFactory]:
    """A factory of started :class:`LiteFSCluster` objects (real LiteFS), all closed at teardown."""
    require_litefs()
    with _closed_at_exit() as clusters:

        def factory(app: str | None = None, **options: Any) -> LiteFSCluster:
            options.setdefault("base_dir", tmp_path / f"litefs-{len(clusters)}")
            cluster = LiteFSCluster(app, **options)
            clusters.append(cluster)
            return cluster.start()

        yield factory


def require_postgres() -> None:
    """Skip the calling test where PostgreSQL cannot run; fail instead under ``POSTGRES_REQUIRED=1``."""
    reason = postgres_unavailable()
    if reason is None:
        return
    if os.environ.get("POSTGRES_REQUIRED", "") not in ("", "0"):
        pytest.fail(f"POSTGRES_REQUIRED is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def postgres_pair() -> Iterator[PostgresPairFactory]:
    """A factory of started :class:`PostgresPair` objects (real PostgreSQL), all closed at teardown.

    Each pair makes its own folder (under the system's temporary folder, which
    the ``postgres`` user can reach when the tests run as root: pytest's
    ``tmp_path`` is private to root).
    """
    require_postgres()
    with _closed_at_exit() as pairs:

        def factory(**options: Any) -> PostgresPair:
            pair = PostgresPair(**options)
            pairs.append(pair)
            return pair.start()

        yield factory
