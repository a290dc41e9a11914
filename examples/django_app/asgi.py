"""The ASGI application: ``uvicorn examples.django_app.asgi:application``."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
application = get_asgi_application()

from examples.django_app.startup import migrate_if_primary  # noqa: E402  (needs the apps loaded)

migrate_if_primary()
