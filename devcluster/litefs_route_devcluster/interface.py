"""What the two dev clusters share: :class:`DevCluster`, which the imitation and real LiteFS both satisfy.

:class:`~litefs_route_devcluster.Cluster` (plain folders, replication you
dial) and :class:`~litefs_route_devcluster.litefs.LiteFSCluster` (real
LiteFS on FUSE) each have more (the imitation's ``set_lag`` and
``fail_over``, LiteFS's ``info``, ``kill_app``, ``pause_replication``...);
code written against this protocol runs on either::

    def fail_over_under_traffic(cluster: DevCluster) -> None:
        old = cluster.wait_primary()
        cluster.kill_node(old)
        new = cluster.wait_primary()
        ...

Checked by mypy (``devcluster/tests/test_devcluster_interface.py`` passes
each class where a ``DevCluster`` is expected) and by a test that their
signatures are the same.

The Postgres cluster (:class:`~litefs_route_devcluster.postgres_cluster.PostgresDevCluster`,
``litefs-route dev --postgres``) is deliberately not one: its primary is a
region named by configuration, which ``promote`` and ``kill_node`` cannot move.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

from .cluster import Instance
from .proxy import FrontProxy

__all__ = ["DevCluster"]


class DevCluster(Protocol):
    """A local cluster of app instances, each on its own (imitated or real) LiteFS node, behind a Fly-like front."""

    #: The instance ids (``node1``, ``node2``...), which are also their ``FLY_MACHINE_ID``.
    ids: list[str]
    #: The database file name in each node's mount.
    database: str
    #: Where the nodes' folders and ``logs/`` are.
    base_dir: str
    #: The app servers, by instance id.
    instances: dict[str, Instance]

    def start(self) -> DevCluster:
        """Start everything; returns the cluster."""
        ...

    def close(self) -> None:
        """Stop everything (also after a failure). Idempotent."""
        ...

    def __enter__(self) -> DevCluster: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    @property
    def front(self) -> FrontProxy:
        """The Fly-like front proxy."""
        ...

    @property
    def front_url(self) -> str: ...

    @property
    def primary(self) -> str | None:
        """The primary's id; None while no node is primary (a failover)."""
        ...

    @property
    def replicas(self) -> list[str]: ...

    def url(self, instance_id: str) -> str:
        """The instance's app server, bypassing the front."""
        ...

    def db_path(self, instance_id: str, database: str | None = None) -> str:
        """The database file in the instance's mount (default: :attr:`database`)."""
        ...

    def positions(self, database: str | None = None) -> dict[str, int]:
        """Instance id -> the TXID of its copy of the database."""
        ...

    def status(self) -> str:
        """A human-readable summary."""
        ...

    def wait_primary(self, expected: str | None = None, timeout: float = 30.0) -> str:
        """Wait until an instance is primary (*expected*, if given); its id."""
        ...

    def wait_replicated(self, timeout: float = 10.0, *, database: str | None = None) -> dict[str, int]:
        """Wait until every running replica holds the primary's last transaction; the positions."""
        ...

    def promote(self, instance_id: str, *, timeout: float = 15.0) -> None:
        """Hand the primary to *instance_id* gracefully (no write lost); wait until it is primary."""
        ...

    def kill_node(self, instance_id: str) -> None:
        """Crash the node: writes it had not replicated are lost; another candidate becomes primary, if any."""
        ...

    def stop_node(self, instance_id: str) -> None:
        """Stop the node gracefully: a primary hands over (releases its lease) to another candidate, if any."""
        ...

    def start_node(self, instance_id: str) -> None:
        """Start a stopped or killed node again; it catches up as a replica."""
        ...
