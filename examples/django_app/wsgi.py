"""The WSGI application: ``gunicorn examples.django_app.wsgi``."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
application = get_wsgi_application()

from examples.django_app.startup import migrate_if_primary  # noqa: E402  (needs the apps loaded)

migrate_if_primary()
