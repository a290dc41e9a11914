"""The guest book's form, read the same way by both demos (SQLite: ``demo.py``; Postgres: ``demo_postgres.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["entry_text"]

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
