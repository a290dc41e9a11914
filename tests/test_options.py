"""The options are defined once (the middleware's signature); the README's table must follow it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from litefs_route import asgi, wsgi
from litefs_route._middleware import RoutingMiddleware

README = Path(__file__).resolve().parent.parent / "README.md"


def _signature_options() -> dict[str, object]:
    parameters = inspect.signature(RoutingMiddleware.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_readme_table_lists_exactly_the_options_with_their_defaults() -> None:
    text = README.read_text()
    table = text[text.index("## Options") : text.index("## What happens to a request")]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]*) \|", table, re.MULTILINE))
    options = _signature_options()
    assert set(rows) == set(options)
    for name, default in options.items():
        if isinstance(default, int | float) and not isinstance(default, bool):
            assert rows[name].strip("` ") == repr(default), name
        elif default is False:
            assert rows[name].strip("` ") == "False", name


def test_every_option_is_documented_on_the_classes_users_build() -> None:
    for middleware in (wsgi.PrimaryRoutingMiddleware, asgi.PrimaryRoutingMiddleware):
        doc = inspect.getdoc(middleware) or ""
        for name in _signature_options():
            assert re.search(rf"^{name}$", doc, re.MULTILINE), (middleware, name)
        # Both inherit the one signature: help() shows every option by name.
        assert inspect.signature(middleware) == inspect.signature(wsgi.PrimaryRoutingMiddleware)


def test_router_with_options_is_refused() -> None:
    """A shared router carries its own options: others alongside it would be silently ignored."""
    shared = wsgi.PrimaryRoutingMiddleware(lambda environ, start_response: [], instance_id="me").router
    assert wsgi.PrimaryRoutingMiddleware(lambda environ, start_response: [], router=shared).router is shared
    with pytest.raises(TypeError, match="max_replays"):
        asgi.PrimaryRoutingMiddleware(lambda scope, receive, send: None, router=shared, max_replays=5)  # type: ignore[arg-type,return-value]
