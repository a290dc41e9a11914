from __future__ import annotations

import os
import sys
from typing import Any

from django.apps import AppConfig
from django.core.signals import got_request_exception


def witness(sender: Any, **kwargs: Any) -> None:
    """What Sentry and friends hook: every call is an error report."""
    print("SIGNAL got_request_exception", file=sys.stderr, flush=True)


class WitnessConfig(AppConfig):
    name = "tests.django_project"
    label = "django_project"

    def ready(self) -> None:
        got_request_exception.connect(witness)
        if os.environ.get("LITEFS_ROUTE_PROMETHEUS"):
            import litefs_route.prometheus

            litefs_route.prometheus.register()
