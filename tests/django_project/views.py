"""Every place a Django app calls ensure_primary() from; each answers its name when it runs."""

from __future__ import annotations

import sqlite3

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import engines
from django.template.response import TemplateResponse
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from litefs_route import ensure_instance, ensure_primary, get_instance_info, routing_counters

_GUARDED = engines["django"].from_string("{{ guard|default:'' }}ran in a template")


def function_view(request: HttpRequest) -> HttpResponse:
    ensure_primary()
    return HttpResponse("function")


class ClassView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        ensure_primary()
        return HttpResponse("class")


def swallowed(request: HttpRequest) -> HttpResponse:
    try:
        ensure_primary()
    except Exception:
        return HttpResponse("swallowed the exception", status=500)
    return HttpResponse("swallowed")


def template(request: HttpRequest) -> HttpResponse:
    # The template calls ensure_primary() while the view renders it.
    return HttpResponse(_GUARDED.render({"guard": ensure_primary}))


def template_response(request: HttpRequest) -> TemplateResponse:
    # Rendered after the view returned, by Django's handler.
    return TemplateResponse(request, _GUARDED, {"guard": ensure_primary})


class DRFView(APIView):
    authentication_classes = ()
    permission_classes = ()

    def post(self, request: Request) -> Response:
        ensure_primary()
        return Response({"ran": "drf"})

    def get(self, request: Request) -> Response:
        ensure_primary()
        return Response({"ran": "drf"})


def instance(request: HttpRequest, instance_id: str) -> HttpResponse:
    ensure_instance(instance_id)
    return HttpResponse(f"ran on {instance_id}")


def boom(request: HttpRequest) -> HttpResponse:
    """A real error: it must still be reported (the middleware must not hide errors)."""
    raise RuntimeError("a real bug")


def _connect() -> sqlite3.Connection:
    return sqlite3.connect(settings.DATABASES["default"]["NAME"], timeout=5)


@csrf_exempt
def write(request: HttpRequest) -> JsonResponse:
    with _connect() as db:
        db.execute("CREATE TABLE IF NOT EXISTS writes (id TEXT PRIMARY KEY, instance TEXT)")
        db.execute("INSERT INTO writes VALUES (?, ?)", (request.POST["id"], get_instance_info().current_instance))
    return JsonResponse({"id": request.POST["id"], "instance": get_instance_info().current_instance})


def read(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"read_on": get_instance_info().current_instance})


def unguarded_write(request: HttpRequest) -> JsonResponse:
    """A GET that writes through Django's ORM connection, unguarded: the safety net's case."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY, instance TEXT)")
        cursor.execute("INSERT INTO hits (instance) VALUES (%s)", [get_instance_info().current_instance])
    return JsonResponse({"instance": get_instance_info().current_instance})


def counters(request: HttpRequest) -> JsonResponse:
    return JsonResponse(routing_counters())


@csrf_exempt
def upload(request: HttpRequest) -> JsonResponse:
    """Hashes the body as Django hands it over, in pieces (the forward-mode tests)."""
    import hashlib

    digest, size = hashlib.sha256(), 0
    while chunk := request.read(65536):
        size += len(chunk)
        digest.update(chunk)
    return JsonResponse({"instance": get_instance_info().current_instance, "size": size, "sha256": digest.hexdigest()})


def metrics(request: HttpRequest) -> HttpResponse:
    """litefs-route's Prometheus metrics (registered in apps.py when LITEFS_ROUTE_PROMETHEUS is set)."""
    import litefs_route.prometheus

    body, content_type = litefs_route.prometheus.exposition()
    return HttpResponse(body, content_type=content_type)
