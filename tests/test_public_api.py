"""The public API, pinned: changing it is a deliberate act, recorded in CHANGELOG.md and docs/api.md.

Public: what ``litefs_route/__init__.py`` exports, the adapter modules
(``asgi``, ``wsgi``, ``django``), the integrations (``prometheus``,
``otel``) and the ``litefs-route`` command. Every other module's name starts
with an underscore. A failure here means a public name was added, removed or
made public by accident: update the pin, ``docs/api.md`` and the
"Unreleased" section of ``CHANGELOG.md`` together.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import litefs_route
from tests.support import ROOT

PUBLIC = {
    "litefs_route": [
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
    ],
    "litefs_route.asgi": ["PrimaryRoutingMiddleware", "SOCKET_REFUSED_CLOSE_CODE"],
    "litefs_route.wsgi": ["PrimaryRoutingMiddleware"],
    "litefs_route.django": ["PrimaryRoutingMiddleware"],
    "litefs_route.prometheus": ["PrometheusMetrics", "StateCollector", "exposition", "register"],
    "litefs_route.otel": ["OtelMetrics", "instrument"],
}
# Modules whose names have no underscore, and why each is there.
PUBLIC_MODULES = {
    "litefs_route.asgi",
    "litefs_route.wsgi",
    "litefs_route.django",
    "litefs_route.django.apps",  # Django's AppConfig: INSTALLED_APPS = ["litefs_route.django"] loads it by name
    "litefs_route.prometheus",
    "litefs_route.otel",
}


@pytest.mark.parametrize("module", sorted(PUBLIC), ids=sorted(PUBLIC))
def test_public_names_are_pinned(module: str) -> None:
    exported = sorted(importlib.import_module(module).__all__)
    assert exported == sorted(PUBLIC[module]), "a public name changed: update this pin, docs/api.md and CHANGELOG.md"


def test_every_other_module_is_private() -> None:
    found = {
        info.name
        for info in pkgutil.walk_packages(litefs_route.__path__, "litefs_route.")
        if not any(part.startswith("_") for part in info.name.split(".")[1:])
    }
    assert found == PUBLIC_MODULES


@pytest.mark.parametrize("module", sorted(PUBLIC), ids=sorted(PUBLIC))
def test_every_public_name_is_documented(module: str) -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    imported = importlib.import_module(module)
    for name in PUBLIC[module]:
        assert f"`{name}" in api, f"{module}.{name} is public but docs/api.md does not name it"
        value = getattr(imported, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), f"{module}.{name} has no docstring"


def test_the_changelog_keeps_a_changelog() -> None:
    text = Path(ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog")
    assert "## [Unreleased]" in text
    assert "keepachangelog.com" in text
