"""Django settings: the database is ``$DATABASE_URL`` (the local server), the middleware's options from common."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from tests.postgres_apps import common

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.postgres_apps.django_site.urls"
USE_TZ = True

INSTALLED_APPS = ["litefs_route.django", "tests.postgres_apps.django_site.apps.ItemsConfig"]
MIDDLEWARE = ["litefs_route.django.PrimaryRoutingMiddleware"]
LITEFS_ROUTE = common.middleware_options()

_url = urlsplit(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/") or "postgres",
        "USER": _url.username or "postgres",
        "PASSWORD": _url.password or "",
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": str(_url.port or 5432),
        "OPTIONS": {"connect_timeout": 5},
    }
}

# Every record at INFO and above on stderr, where the tests look for errors (Django's own
# "Internal Server Error" among them); a line for each got_request_exception too (apps.py).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "LOG %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
}
