"""What both demos' guest books share (SQLite: ``demo.py``; Postgres: ``demo_postgres.py``): form and routes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["entry_text", "serve_guest_book"]

# Bytes of form read at most, and characters of an entry kept: a demo, not a store.
_FORM_LIMIT = 10_000
_TEXT_LIMIT = 500


def entry_text(environ: WSGIEnvironment) -> str:
    """The posted form's ``text``, stripped and cut to 500 characters; "" if there is none."""
    try:
        length = min(int(environ.get("CONTENT_LENGTH") or 0), _FORM_LIMIT)
    except ValueError:
        length = 0
    body: bytes = environ["wsgi.input"].read(length)
    form = parse_qs(body.decode("utf-8", "replace"))
    return (form.get("text") or [""])[0].strip()[:_TEXT_LIMIT]


def serve_guest_book(
    environ: WSGIEnvironment,
    start_response: StartResponse,
    *,
    index: Callable[[], bytes],
    add_entry: Callable[[WSGIEnvironment], None],
    count_visit: Callable[[], None],
    headers: Iterable[tuple[str, str]] = (),
) -> Iterable[bytes]:
    """The guest book's routes, on a store's three operations; *headers* go on every answer.

    ``/healthz`` (never routed), ``/`` the page, ``POST /entries`` the form,
    ``GET /visit`` a GET that writes (guarded by ``ensure_primary()``).
    """
    path, method = environ.get("PATH_INFO", "/"), environ["REQUEST_METHOD"]
    if path == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain"), *headers])
        return [b"ok"]
    if path == "/" and method in ("GET", "HEAD"):
        body = index()
        start_response(
            "200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))), *headers]
        )
        return [body]
    if path == "/entries" and method == "POST":
        add_entry(environ)
        start_response("303 See Other", [("Location", "/"), ("Content-Length", "0"), *headers])
        return [b""]
    if path == "/visit" and method == "GET":
        count_visit()
        start_response("303 See Other", [("Location", "/"), ("Content-Length", "0"), *headers])
        return [b""]
    start_response("404 Not Found", [("Content-Type", "text/plain"), *headers])
    return [b"not found"]
