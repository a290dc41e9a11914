"""Postgres read replicas on Fly: writes go to the primary region, reads wait for their LSN.

A Postgres cluster on Fly has its primary in one region (``PRIMARY_REGION``)
and hot standbys in others; each Machine knows its own region
(``FLY_REGION``). :class:`PostgresSource` makes the middleware:

* run writes in the primary region, and answer them elsewhere with
  ``fly-replay: region=<primary region>`` (Fly's proxy replays them on a
  Machine there); every response carries ``Fly-Primary-Region``;
* after a write in the primary region, set the ``__lsn`` cookie to the
  primary's WAL position (``pg_current_wal_lsn()``); a read carrying it in
  another region waits up to ``consistency_wait`` until the local standby
  has replayed that far (``pg_last_wal_replay_lsn()``), then runs there;
  not caught up, it is replayed to the primary region. The positions are
  read over one connection the library keeps (:mod:`litefs_route._postgres`),
  never on the request's own, and only when a cookie asks for it (or after
  a write, or once per ``cache_ttl`` on a replica for the health lag);
* catch a write that slipped through to a standby: SQLSTATE ``25006``
  (``read_only_sql_transaction``), raised through psycopg 3, psycopg2,
  Django or SQLAlchemy, proves nothing of it ran, so it is replayed as
  LiteFS's refused writes are;
* fail the health check (``health_path``) on a standby whose replay lag
  exceeds ``max_lag``, or whose lag cannot be read.

Which Machine is primary is configuration, not discovery: after a failover
(``pg_promote()`` on a standby), set ``PRIMARY_REGION`` to the new primary's
region and redeploy. Until then writes still go to the old primary region.
Outside the primary region a read's ``__lsn`` cookie is compared with the
local server's position only while that server is a standby: one that is
not (promoted, so no longer receiving the primary region's WAL) knows no
position, and such a read is replayed to the primary region after
``consistency_wait``. Its health check still passes (not in recovery, its
lag reads 0), and a write the app makes in a GET there is not refused (the
safety net needs a standby's 25006): it runs on the promoted server.
"""

from __future__ import annotations

import dataclasses
import os
import re

from ._consistency import Positions, PositionWatcher
from ._mount import NodeState, Role
from ._postgres import POLL_INTERVAL, PostgresPositionReader
from ._sqlite_errors import WriteFailure, classify_postgres_one, classify_write_failure

__all__ = ["LSN_COOKIE", "PostgresSource", "region_state", "region_state_from_env", "regions_from_env"]

#: The read-your-writes cookie: the primary's WAL position after the client's last write, as 16 hex digits.
LSN_COOKIE = "__lsn"

# A Fly region ("ord", "lhr") or a name of your own: it goes into fly-replay and a header.
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class _LSNWatcher(PositionWatcher):
    """The local server's WAL position, watched as LiteFS's ``<db>-pos`` is (one shared poller while anyone waits).

    *standby_only* (outside the primary region): the position only while the
    server is a standby; a promoted one's is unknown (None), so a read that
    waits for a write of the primary region is replayed there, never answered
    from a server that stopped receiving that region's WAL.
    """

    def __init__(self, reader: PostgresPositionReader, *, standby_only: bool) -> None:
        super().__init__(repr(reader), "postgres", poll_interval=POLL_INTERVAL)
        self._reader = reader
        self._standby_only = standby_only

    def fetch(self) -> int | None:
        return self._reader.position(standby_only=self._standby_only)


class PostgresSource:
    """Postgres with read replicas in several Fly regions: the primary is the region ``PRIMARY_REGION`` names.

    dsn
        The local server, as the app reads from it (the primary in the
        primary region, the region's standby elsewhere). Default
        ``$DATABASE_URL``. Read only by the library's own connection
        (psycopg 3: ``pip install 'litefs-route[postgres]'``); its password
        is never logged nor shown.
    primary_region
        The region of the primary. Default ``$PRIMARY_REGION``.
    region
        This Machine's region. Default ``$FLY_REGION``.
    read_your_writes
        Set the ``__lsn`` cookie after writes and make reads wait for it
        (default True).
    connect_timeout, query_timeout
        Seconds for the library's connection to connect, and for each of its
        queries (default 2.0 and 1.0).
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        primary_region: str | None = None,
        region: str | None = None,
        read_your_writes: bool = True,
        connect_timeout: float = 2.0,
        query_timeout: float = 1.0,
    ) -> None:
        dsn = dsn if dsn is not None else os.environ.get("DATABASE_URL", "")
        if not dsn:
            raise ValueError("PostgresSource needs dsn (or $DATABASE_URL): the local server's connection string")
        self.primary_region = _region("primary_region", "PRIMARY_REGION", primary_region)
        self.region = _region("region", "FLY_REGION", region)
        self._reader = PostgresPositionReader(dsn, connect_timeout=connect_timeout, query_timeout=query_timeout)
        self.where: str | None = f"Postgres in region {self.region}, primary region {self.primary_region}"
        self.databases = ("postgres",)
        self.cookie_base = LSN_COOKIE
        #: The local server's WAL position; None: read-your-writes off.
        watcher = _LSNWatcher(self._reader, standby_only=not self.is_primary_region)
        self.positions = Positions([watcher]) if read_your_writes else None

    @property
    def is_primary_region(self) -> bool:
        return self.region == self.primary_region

    def read_state(self, instance_id: str) -> NodeState:
        if self.is_primary_region:
            return region_state(instance_id, self.region, self.primary_region, 0)
        # The lag is what the health check reads; routing itself needs no query. A server
        # here that is no standby (promoted, PRIMARY_REGION not yet changed) has no lag:
        # its health check fails, so Fly's proxy stops sending it the writes a GET may make.
        lag_ms = self._reader.replay_lag_ms(standby_only=True)
        state = region_state(instance_id, self.region, self.primary_region, lag_ms)
        if lag_ms is None:
            detail = f"{state.detail}; the local server is unreachable or no standby (promoted? set PRIMARY_REGION)"
            return dataclasses.replace(state, detail=detail)
        return state

    def classify_failure(self, exc: BaseException) -> WriteFailure | None:
        return classify_write_failure(exc, classify_one=classify_postgres_one)

    def close(self) -> None:
        """Close the library's connection: from then on no position nor lag is known (reads wait, health fails)."""
        self._reader.close()

    def __repr__(self) -> str:
        return f"PostgresSource({self._reader!r}, primary_region={self.primary_region!r}, region={self.region!r})"


def region_state(instance_id: str, region: str, primary_region: str, lag_ms: int | None) -> NodeState:
    """The node state of *instance_id* in *region*: the primary if it is the primary region, else a replica of it."""
    if region == primary_region:
        detail = f"region {region} is the primary region"
        return NodeState(Role.PRIMARY, instance_id, primary_region, lag_ms, detail, primary_is_region=True)
    detail = f"region {region}; the primary region is {primary_region}"
    return NodeState(Role.REPLICA, instance_id, primary_region, lag_ms, detail, primary_is_region=True)


def regions_from_env() -> tuple[str, str] | None:
    """(``$FLY_REGION``, ``$PRIMARY_REGION``) if both name a region, else None."""
    region, primary = os.environ.get("FLY_REGION", ""), os.environ.get("PRIMARY_REGION", "")
    return (region, primary) if _REGION.fullmatch(region) and _REGION.fullmatch(primary) else None


def region_state_from_env(instance_id: str) -> NodeState | None:
    """The node state of *instance_id* by ``$FLY_REGION`` and ``$PRIMARY_REGION`` (no database read: no lag).

    None unless both name a region. What a process follows without a LiteFS
    mount (the hooks, ``get_instance_info()``), as :class:`PostgresSource` routes.
    """
    regions = regions_from_env()
    return None if regions is None else region_state(instance_id, *regions, None)


def _region(option: str, variable: str, value: str | None) -> str:
    region = value if value is not None else os.environ.get(variable, "")
    if not _REGION.fullmatch(region):
        raise ValueError(f"PostgresSource needs {option} (or ${variable}): a region name such as 'ord', got {region!r}")
    return region
