"""litefs-route: send every write to the LiteFS primary, for any WSGI or ASGI app.

Standard library only; importing this package imports no web framework.

- :mod:`litefs_route.wsgi` / :mod:`litefs_route.asgi` / :mod:`litefs_route.django`: ``PrimaryRoutingMiddleware``.
- :mod:`litefs_route.releases`: which release each instance runs; after-release steps, the schema gate.
- :func:`ensure_primary`: in a handler, end the request in a replay to the
  primary unless this instance is the primary.
- :func:`ensure_instance`: the same, to one named instance.
- :func:`instance_url`, :func:`list_instances`: Fly's private network.
- :func:`get_instance_info`: this instance, the primary, and whether they are the same.
- :func:`routing_counters`: what this process's requests ended in and waited for.
"""

from __future__ import annotations

from .context import InstanceInfo, ensure_instance, ensure_primary, get_instance_info, report_exception
from .counters import routing_counters
from .exceptions import PrimaryRequired
from .fly import NotOnFly, instance_url, list_instances
from .mount import NodeState, Role
from .ops import (
    HaltLockError,
    WaitTimeout,
    halt_lock,
    halt_lock_async,
    wait_for_primary,
    wait_for_sync,
    wait_for_txid,
)

__all__ = [
    "HaltLockError",
    "InstanceInfo",
    "NodeState",
    "NotOnFly",
    "PrimaryRequired",
    "Role",
    "WaitTimeout",
    "ensure_instance",
    "ensure_primary",
    "get_instance_info",
    "halt_lock",
    "halt_lock_async",
    "instance_url",
    "list_instances",
    "report_exception",
    "routing_counters",
    "wait_for_primary",
    "wait_for_sync",
    "wait_for_txid",
]

__version__ = "0.1.0"
