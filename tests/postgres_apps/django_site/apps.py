from __future__ import annotations

import sys
from typing import Any

from django.apps import AppConfig
from django.core.signals import got_request_exception


def witness(sender: Any, **kwargs: Any) -> None:
    """What Sentry and friends hook: every call is an error report."""
    print("SIGNAL got_request_exception", file=sys.stderr, flush=True)


class ItemsConfig(AppConfig):
    name = "tests.postgres_apps.django_site"
    label = "pg_items"

    def ready(self) -> None:
        got_request_exception.connect(witness)
