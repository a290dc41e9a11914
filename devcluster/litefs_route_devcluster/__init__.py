"""A local LiteFS + Fly cluster on one machine, for development and tests.

**This is a development and test tool, not a replacement for LiteFS.** It
lets you watch multi-instance behaviour (writes replayed to the primary,
replication lag, failover) on a laptop or in CI, with the file formats and
proxy behaviour that litefs-route depends on.

What it imitates:

- Fly's edge proxy (:class:`FrontProxy`): round-robin over instances,
  ``fly-replay`` (the whole request is re-sent, with ``fly-replay-src``),
  at most 10 replays (then 502 ``PA02``), no replay of bodies over 1 MB,
  ``fly-force-instance-id``, streaming responses.
- LiteFS's mount files in each instance's ``LITEFS_DIR``: ``.primary``,
  ``.lag`` and ``<db>-pos`` with LiteFS's exact formats and transitions,
  including the no-primary period of a failover.
- Replication of one SQLite database (rollback-journal mode) from the
  primary's folder to the others after a configurable lag; replica copies
  refuse writes with SQLite's own "attempt to write a readonly database".
- Failover (graceful hand-off, or a crash that loses unreplicated writes),
  stopping and restarting instances.

What it does not: no FUSE (the files are plain files, so the kernel caching
quirks of a real mount are absent), no LTX files, no consul leases or
elections (the primary moves only when you say so), no WAL mode, no LiteFS
HTTP proxy (``__txid`` cookies, ``/litefs/health``), no HALT lock, no
private network (``*.internal``); TXIDs never go backwards; a replica
connection that was opened while read-only stays read-only after promotion
(open connections per request, as LiteFS users usually do). See
``docs/devcluster.md``.

Standard library only at import time; instances run under uvicorn (ASGI) or
Werkzeug / wsgiref (WSGI) in subprocesses.

::

    from litefs_route_devcluster import Cluster

    with Cluster("myapp:app", instances=3, lag=0.5) as cluster:
        ...  # cluster.front_url, cluster.promote("node2"), cluster.set_lag(2) ...
"""

from __future__ import annotations

__version__ = "0.1.0"

from .cluster import DEFAULT_APP, Cluster, Instance, free_port, port_open, release_port, wait_for
from .interface import DevCluster
from .proxy import MAX_REPLAYS, REPLAY_BODY_LIMIT, FrontProxy, ReplayEvent, parse_fly_replay
from .replication import Replicator

__all__ = [
    "DEFAULT_APP",
    "MAX_REPLAYS",
    "REPLAY_BODY_LIMIT",
    "Cluster",
    "DevCluster",
    "FrontProxy",
    "Instance",
    "ReplayEvent",
    "Replicator",
    "free_port",
    "parse_fly_replay",
    "port_open",
    "release_port",
    "wait_for",
]
