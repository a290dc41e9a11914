from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from tests.postgres_apps import common
from tests.postgres_apps.django_site.models import Item


@csrf_exempt
def items(request: HttpRequest) -> JsonResponse:
    if request.method == "POST":
        item = Item.objects.create(name=request.POST["name"], instance=common.INSTANCE)
        return JsonResponse({"id": item.id, "instance": common.INSTANCE})
    rows = [{"id": i.id, "name": i.name, "instance": i.instance} for i in Item.objects.order_by("id")]
    return JsonResponse({"items": rows, "instance": common.INSTANCE})


@require_GET
def oops(request: HttpRequest) -> JsonResponse:
    # The ORM write inside a GET: on a standby, Django raises its InternalError wrapping psycopg's 25006.
    item = Item.objects.create(name=request.GET["name"], instance=common.INSTANCE)
    return JsonResponse({"id": item.id, "instance": common.INSTANCE})


def boom(request: HttpRequest) -> JsonResponse:
    raise RuntimeError("a real bug")


def state(request: HttpRequest) -> JsonResponse:
    return JsonResponse(common.state())
