"""A small guest book on Django + SQLite behind litefs-route.

- ``GET /`` lists the entries (runs on any instance).
- ``POST /entries`` adds one (a write: replayed to the primary on a replica),
  then redirects back to the list.
- ``GET /visit`` counts a visit: a GET that writes, guarded by
  ``ensure_primary()`` as a session refresh would be.
- ``GET /healthz`` is passthrough: answered by every instance, never routed.
- ``/admin/``: Django's admin; its logins and changes are replayed to the primary.
"""

from __future__ import annotations

from django.db.models import F
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.html import format_html, format_html_join
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from examples.django_app.models import Entry, Visits
from litefs_route import ensure_primary, get_instance_info


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    info = get_instance_info()
    visits = Visits.objects.filter(pk=1).values_list("count", flat=True).first() or 0
    items = format_html_join(
        "", "<li>{} <small>(on {})</small></li>", Entry.objects.order_by("-id").values_list("text", "written_on")
    )
    primary = "this instance" if info.is_primary else "another instance"
    return HttpResponse(
        format_html(
            "<!doctype html><title>litefs-route Django example</title><h1>Guest book</h1>"
            "<p>This is instance <b>{}</b>; the primary is <b>{}</b> ({}). Visits: {}.</p>"
            '<form method="post" action="/entries"><input name="text" required> <button>Sign</button></form>'
            "<ul>{}</ul>"
            '<p><a href="/visit">Count a visit</a> (a GET that writes, guarded by ensure_primary())</p>',
            info.current_instance,
            info.primary_instance or "unknown",
            primary,
            visits,
            items,
        )
    )


@csrf_exempt  # a demo form without a token; keep CSRF protection in a real app
@require_POST
def add_entry(request: HttpRequest) -> HttpResponse:
    text = request.POST.get("text", "").strip()[:500]
    if text:
        Entry.objects.create(text=text, written_on=get_instance_info().current_instance)
    return HttpResponseRedirect("/", status=303)


@require_GET
def visit(request: HttpRequest) -> HttpResponse:
    ensure_primary()  # on a replica the request ends here, replayed to the primary
    Visits.objects.get_or_create(pk=1)
    Visits.objects.filter(pk=1).update(count=F("count") + 1)
    return HttpResponseRedirect("/", status=303)


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")
