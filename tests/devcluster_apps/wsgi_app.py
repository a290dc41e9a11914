"""A bare WSGI test app behind litefs_route.wsgi.PrimaryRoutingMiddleware (same routes as asgi_app, no stream)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from litefs_route.wsgi import PrimaryRoutingMiddleware

from . import common

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

_STATUS = {200: "200 OK", 404: "404 Not Found", 500: "500 Internal Server Error"}


def _json(start_response: StartResponse, status: int, payload: object) -> list[bytes]:
    body = common.dumps(payload)
    start_response(_STATUS[status], [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def inner(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    method = environ["REQUEST_METHOD"]
    if path == "/whoami":
        body = common.INSTANCE.encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/write" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        form = parse_qs(environ["wsgi.input"].read(length).decode())
        status, payload = common.record_write(form["id"][0], form.get("body", [""])[0])
        return _json(start_response, status, payload)
    if path.startswith("/unguarded-write/"):
        return _json(start_response, 200, common.record_write_unguarded(path.removeprefix("/unguarded-write/")))
    if path.startswith("/held-write/") and method == "POST":
        hold = parse_qs(environ.get("QUERY_STRING", "")).get("hold", ["commit"])[0]
        return _json(start_response, 200, common.held_write(path.removeprefix("/held-write/"), hold))
    if path.startswith("/item/"):
        found = common.read_write(path.removeprefix("/item/"))
        return _json(start_response, 200 if found else 404, found or {"read_on": common.INSTANCE})
    return _json(start_response, 404, {"error": "not found"})


common.init_schema()
app = PrimaryRoutingMiddleware(inner, **common.MIDDLEWARE_OPTIONS)
