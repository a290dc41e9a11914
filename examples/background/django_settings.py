"""The Django example's settings, with this folder as an app (for its ``tick`` management command)."""

from __future__ import annotations

from examples.django_app.settings import *  # noqa: F403
from examples.django_app.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "examples.background"]
