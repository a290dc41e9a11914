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
- Background work (docs/background-work.md): :func:`is_primary`, :func:`primary_only`,
  :func:`on_become_primary`, :func:`on_stop_primary`; :func:`primary_task` and
  :func:`call_on_primary` (served by :func:`serve_tasks_wsgi` / :func:`serve_tasks_asgi`).
"""

from __future__ import annotations

from ._hooks import is_primary, on_become_primary, on_stop_primary, primary_only, primary_only_skips
from ._tasks import (
    TaskClient,
    TaskError,
    TaskFailed,
    TaskMayHaveRun,
    TaskNotReplicated,
    TaskNotRun,
    TaskRefused,
    call_on_primary,
    primary_task,
    serve_tasks_asgi,
    serve_tasks_wsgi,
)
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
    "TaskClient",
    "TaskError",
    "TaskFailed",
    "TaskMayHaveRun",
    "TaskNotReplicated",
    "TaskNotRun",
    "TaskRefused",
    "WaitTimeout",
    "call_on_primary",
    "ensure_instance",
    "ensure_primary",
    "get_instance_info",
    "halt_lock",
    "halt_lock_async",
    "instance_url",
    "is_primary",
    "list_instances",
    "on_become_primary",
    "on_stop_primary",
    "primary_only",
    "primary_only_skips",
    "primary_task",
    "report_exception",
    "routing_counters",
    "serve_tasks_asgi",
    "serve_tasks_wsgi",
    "wait_for_primary",
    "wait_for_sync",
    "wait_for_txid",
]

__version__ = "0.1.0"
