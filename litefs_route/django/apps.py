"""The ``litefs_route.django`` Django app: its system checks (:mod:`litefs_route.django._checks`)."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks

__all__ = ["LiteFSRouteConfig"]


class LiteFSRouteConfig(AppConfig):
    name = "litefs_route.django"
    label = "litefs_route"
    verbose_name = "litefs-route"

    def ready(self) -> None:
        from ._checks import check_litefs_route

        checks.register(check_litefs_route, "litefs_route")
