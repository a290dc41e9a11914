"""The options are defined once (the middleware's signature); the docs' reference must follow it."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from litefs_route import asgi, wsgi
from litefs_route._middleware import RoutingMiddleware

DOCS_EXT = Path(__file__).resolve().parent.parent / "docs" / "_ext" / "litefs_options.py"


def _docs_extension() -> Any:
    """The docs' options directive (docs/_ext/litefs_options.py), loaded without Sphinx."""
    spec = importlib.util.spec_from_file_location("litefs_options", DOCS_EXT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def _signature_options() -> dict[str, object]:
    parameters = inspect.signature(RoutingMiddleware.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_docs_reference_lists_exactly_the_options_with_their_defaults() -> None:
    """docs/options.md is generated from the docstring, with each default from the signature."""
    options, closing = _docs_extension().options()
    signature = _signature_options()
    assert [option.name for option in options] == list(signature)
    for option in options:
        assert option.default == repr(signature[option.name]), option.name
        assert option.description, option.name
    assert "Globs follow LiteFS" in closing
    rendered = _docs_extension().options_markdown()
    for name, default in signature.items():
        assert f"## `{name}`\n" in rendered
        assert re.search(rf"^`{name}: .* = {re.escape(repr(default))}`$", rendered, re.MULTILINE), name


def test_every_option_is_documented_on_the_classes_users_build() -> None:
    for middleware in (wsgi.PrimaryRoutingMiddleware, asgi.PrimaryRoutingMiddleware):
        doc = inspect.getdoc(middleware) or ""
        for name in _signature_options():
            assert re.search(rf"^{name}$", doc, re.MULTILINE), (middleware, name)
        # Both inherit the one signature: help() shows every option by name.
        assert inspect.signature(middleware) == inspect.signature(wsgi.PrimaryRoutingMiddleware)


def test_router_with_options_is_refused() -> None:
    """A shared routing carries its own options: others alongside it would be silently ignored."""
    shared = wsgi.PrimaryRoutingMiddleware(lambda environ, start_response: [], instance_id="me").routing
    assert wsgi.PrimaryRoutingMiddleware(lambda environ, start_response: [], routing=shared).routing is shared
    with pytest.raises(TypeError, match="max_replays"):
        asgi.PrimaryRoutingMiddleware(lambda scope, receive, send: None, routing=shared, max_replays=5)  # type: ignore[arg-type,return-value]
