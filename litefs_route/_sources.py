"""Where routing learns who is primary: a *primary source*.

The rules (:mod:`litefs_route._decision`) are the same whatever the database;
what differs is where their facts come from. A source answers four
questions, and nothing else:

* **What this node is, and where writes go** (:meth:`PrimarySource.read_state`):
  a :class:`~litefs_route.NodeState` whose role is primary, replica or "no
  primary", and whose ``primary_id`` names the primary's instance (replayed
  with ``fly-replay: instance=``) or, with ``primary_is_region``, its region
  (``fly-replay: region=``). Called at most once per ``cache_ttl`` per
  process, in a worker thread under ASGI; it must not raise.
* **How far this node is** (:attr:`PrimarySource.positions`): for
  read-your-writes, one position per database (an int that grows with every
  write), or None where read-your-writes is off.
* **Which cookie carries a position** (:attr:`PrimarySource.cookie_base`,
  :attr:`PrimarySource.databases`).
* **Which database errors prove "this is a replica, nothing ran"**
  (:meth:`PrimarySource.classify_failure`): the safety net replays those.

Three sources ship: :class:`LiteFSSource` (the default, from the ``litefs_dir``
and ``database`` options), :class:`~litefs_route.PostgresSource` (Postgres
read replicas in several Fly regions) and :class:`StaticSource` (one fixed
primary instance), the last as a model for your own: a source is a small
class.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ._consistency import TXID_COOKIE, Positions
from ._mount import NodeState, Role, is_valid_instance_id, read_node_state
from ._sqlite_errors import WriteFailure, classify_write_failure

__all__ = ["LiteFSSource", "PrimarySource", "StaticSource"]


@runtime_checkable
class PrimarySource(Protocol):
    """What routing needs to know from the database's replication (see the module's documentation)."""

    @property
    def where(self) -> str | None:
        """What it reads, for logs and reprs (a mount path, a region); never a secret. None: standalone."""
        ...

    @property
    def databases(self) -> tuple[str, ...]:
        """The read-your-writes databases, one position each (their cookie names follow them)."""
        ...

    @property
    def cookie_base(self) -> str:
        """The first database's cookie name; each other's is ``<cookie_base>_<name>``."""
        ...

    @property
    def positions(self) -> Positions | None:
        """Read-your-writes: a watcher of this node's position in each database; None: off.

        A position is an int that grows with every write (LiteFS: a TXID;
        Postgres: a WAL LSN). Another source's watcher is a
        :class:`~litefs_route._consistency.PositionWatcher` whose ``fetch()``
        reads it.
        """
        ...

    def read_state(self, instance_id: str) -> NodeState:
        """Who is primary, as seen by *instance_id* now (blocking; never raises)."""
        ...

    def classify_failure(self, exc: BaseException) -> WriteFailure | None:
        """What a failed write proves: ``REFUSED`` (nothing ran), ``IO_ERROR`` (may have run), None (the app's own)."""
        ...


class LiteFSSource:
    """LiteFS: the node state from the mount's ``.primary`` and ``.lag``, positions from ``<db>-pos``.

    The middleware builds it from its ``litefs_dir`` and ``database`` options
    (and follows LiteFS's event stream on top of it, ``litefs_api_url``).
    """

    def __init__(self, litefs_dir: str | None, databases: Sequence[str] = ()) -> None:
        self.where = litefs_dir or None
        self.databases = tuple(databases)
        self.cookie_base = TXID_COOKIE
        #: The watchers of ``<db>-pos`` (LiteFS's event stream also feeds them).
        self.positions: Positions | None = (
            Positions.in_mount(litefs_dir, databases) if litefs_dir and databases else None
        )

    def read_state(self, instance_id: str) -> NodeState:
        return read_node_state(self.where, instance_id)

    def classify_failure(self, exc: BaseException) -> WriteFailure | None:
        return classify_write_failure(exc)

    def __repr__(self) -> str:
        return f"LiteFSSource(litefs_dir={self.where!r}, databases={self.databases!r})"


class StaticSource:
    """One fixed primary instance: ``primary_instance`` (default ``$PRIMARY_INSTANCE``) takes every write.

    Every other instance replays writes to it with ``fly-replay: instance=``.
    For a database whose writer does not move (a single writer Machine with
    read replicas that follow it, such as Litestream's read-replica VFS). No
    read-your-writes, and no health lag. *classify_failure*: what a failed
    write proves (default: SQLite's answers, as for LiteFS).
    """

    def __init__(
        self,
        primary_instance: str | None = None,
        *,
        classify_failure: Callable[[BaseException], WriteFailure | None] = classify_write_failure,
    ) -> None:
        primary = primary_instance if primary_instance is not None else os.environ.get("PRIMARY_INSTANCE", "")
        if not is_valid_instance_id(primary):
            raise ValueError(f"primary_instance (or $PRIMARY_INSTANCE) must be an instance id, got {primary!r}")
        self.primary = primary
        self.where: str | None = f"primary instance {primary}"
        self.databases: tuple[str, ...] = ()
        self.cookie_base = TXID_COOKIE
        self.positions: Positions | None = None
        self._classify = classify_failure

    def read_state(self, instance_id: str) -> NodeState:
        role = Role.PRIMARY if instance_id == self.primary else Role.REPLICA
        return NodeState(role, instance_id, self.primary, 0, f"the primary is {self.primary}, a fixed instance")

    def classify_failure(self, exc: BaseException) -> WriteFailure | None:
        return self._classify(exc)

    def __repr__(self) -> str:
        return f"StaticSource(primary_instance={self.primary!r})"
