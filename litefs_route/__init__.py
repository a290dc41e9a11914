"""litefs-route: send every write to the LiteFS primary, for any WSGI or ASGI app.

Standard library only; importing this package imports no web framework.

- :mod:`litefs_route.wsgi` / :mod:`litefs_route.asgi` / :mod:`litefs_route.django`: ``PrimaryRoutingMiddleware``.
- :func:`run_after_release`, :func:`wait_for_schema`, :class:`Heartbeat`, :func:`promote`:
  release-aware migrations and the lease call (``docs/migrations.md``).
- :func:`ensure_primary`: in a handler, end the request in a replay to the
  primary unless this instance is the primary.
- :func:`ensure_instance`: the same, to one named instance.
- :func:`instance_url`, :func:`list_instances`: Fly's private network.
- :func:`get_instance_info`: this instance, the primary, and whether they are the same.
- :func:`routing_counters`: what this process's requests ended in and waited for.
- :func:`read_position`, :func:`is_readonly_error`: what the mount and SQLite say.
- Where routing learns who is primary (docs/sources.md): :class:`PrimarySource`, with
  :class:`LiteFSSource` (the default), :class:`PostgresSource` (Postgres read
  replicas in several Fly regions) and :class:`StaticSource` (one fixed primary instance).
- Background work (docs/background-work.md): :func:`is_primary`, :func:`primary_only`,
  :func:`on_become_primary`, :func:`on_stop_primary`; :func:`primary_task` and
  :func:`call_on_primary` (served by :func:`serve_tasks_wsgi` / :func:`serve_tasks_asgi`).

This module's ``__all__``, the adapter modules (``asgi``, ``wsgi``,
``django``), the integrations (``prometheus``, ``otel``) and the
``litefs-route`` command are the public API (``docs/api.md``); every module
whose name starts with an underscore is private and may change in any release.
"""

from __future__ import annotations

from ._context import InstanceInfo, ensure_instance, ensure_primary, get_instance_info, report_exception
from ._counters import routing_counters
from ._exceptions import PrimaryRequired
from ._fly import NotOnFly, instance_url, list_instances
from ._hooks import is_primary, on_become_primary, on_stop_primary, primary_only, primary_only_skips
from ._mount import NodeState, Position, Role, read_position
from ._ops.halt import HaltLockError, halt_lock, halt_lock_async
from ._ops.lease import promote
from ._ops.registry import Heartbeat
from ._ops.steps import StepClaimed, run_after_release
from ._ops.waits import WaitTimeout, wait_for_primary, wait_for_schema, wait_for_sync, wait_for_txid
from ._postgres_source import PostgresSource
from ._sources import LiteFSSource, PrimarySource, StaticSource
from ._sqlite_errors import WriteFailure, WriteFailureKind, is_readonly_error
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

__all__ = [
    "HaltLockError",
    "Heartbeat",
    "InstanceInfo",
    "LiteFSSource",
    "NodeState",
    "NotOnFly",
    "Position",
    "PostgresSource",
    "PrimaryRequired",
    "PrimarySource",
    "Role",
    "StaticSource",
    "StepClaimed",
    "TaskClient",
    "TaskError",
    "TaskFailed",
    "TaskMayHaveRun",
    "TaskNotReplicated",
    "TaskNotRun",
    "TaskRefused",
    "WaitTimeout",
    "WriteFailure",
    "WriteFailureKind",
    "call_on_primary",
    "ensure_instance",
    "ensure_primary",
    "get_instance_info",
    "halt_lock",
    "halt_lock_async",
    "instance_url",
    "is_primary",
    "is_readonly_error",
    "list_instances",
    "on_become_primary",
    "on_stop_primary",
    "primary_only",
    "primary_only_skips",
    "primary_task",
    "promote",
    "read_position",
    "report_exception",
    "routing_counters",
    "run_after_release",
    "serve_tasks_asgi",
    "serve_tasks_wsgi",
    "wait_for_primary",
    "wait_for_schema",
    "wait_for_sync",
    "wait_for_txid",
]

__version__ = "0.1.0"
