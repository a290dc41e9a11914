"""A Django project for the tests: every way a view can end in a replay, and witnesses of errors.

Configured from the environment: ``DJANGO_DEBUG`` (1/0), ``MAIL_DIR`` (where
Django's file e-mail backend writes what ADMINS would receive),
``LITEFS_ROUTE_JSON`` (the middleware's options). The server's stderr gets
every log record at INFO and above, and a line for each
``got_request_exception`` (see apps.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SECRET_KEY = "tests-only"
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.django_project.urls"
USE_TZ = True
ADMINS = [("Ops", "ops@example.com")]
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = os.environ.get("MAIL_DIR", "/nonexistent-mail-dir")

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "litefs_route.django",
    "tests.django_project.apps.WitnessConfig",
]
MIDDLEWARE = [
    "litefs_route.django.PrimaryRoutingMiddleware",
    "django.middleware.common.CommonMiddleware",
]
LITEFS_ROUTE = json.loads(os.environ.get("LITEFS_ROUTE_JSON") or "{}")

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": Path(os.environ.get("LITEFS_DIR") or ".") / os.environ.get("DATABASE_FILENAME", "app.db"),
    }
}
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates"}]
REST_FRAMEWORK = {"UNAUTHENTICATED_USER": None}

# Django's own handlers stay (the "django" logger mails ADMINS when DEBUG is off); everything
# at INFO and above also reaches stderr, where the tests look for error reports.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "LOG %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
}

# litefs_route's records as JSON lines in $JSON_LOG_FILE, when a test asks for it (python-json-logger).
if os.environ.get("JSON_LOG_FILE"):
    LOGGING["formatters"]["json"] = {  # type: ignore[index]
        "()": "pythonjsonlogger.json.JsonFormatter",
        "fmt": "%(levelname)s %(name)s %(message)s",
    }
    LOGGING["handlers"]["json"] = {  # type: ignore[index]
        "class": "logging.FileHandler",
        "filename": os.environ["JSON_LOG_FILE"],
        "formatter": "json",
    }
    LOGGING["loggers"] = {"litefs_route": {"handlers": ["json"], "level": "INFO"}}

# Sentry, when a test asks for it: every event it would send goes to $SENTRY_EVENTS_FILE.
if os.environ.get("SENTRY_EVENTS_FILE"):
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration

    from tests.sentry_witness import DSN, FileTransport

    sentry_sdk.init(
        dsn=DSN, transport=FileTransport, integrations=[DjangoIntegration()], auto_enabling_integrations=False
    )
