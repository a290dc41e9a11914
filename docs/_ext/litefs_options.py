"""The options reference of docs/options.md, read from the middleware at build time.

The options are defined once, as the keyword parameters of
``litefs_route._middleware.RoutingMiddleware``, and documented once, in its
docstring (which ``help(PrimaryRoutingMiddleware)`` shows too). This extension
replaces the marker ``<!-- litefs-options -->`` in a page, as the page is
read, with that docstring's option list, each option a heading (so pages link
to ``options.md#forward``) with its type and default from the signature: the
reference cannot drift from the code. An option the docstring documents but
the signature lacks, or the other way round, fails the build.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"^[a-z_]+$")


@dataclass(frozen=True)
class Option:
    name: str
    annotation: str
    default: str
    description: str  # reStructuredText, as in the docstring


def _docstring() -> str:
    from litefs_route._middleware import RoutingMiddleware

    return inspect.cleandoc(RoutingMiddleware.__doc__ or "")


def _signature() -> dict[str, inspect.Parameter]:
    from litefs_route._middleware import RoutingMiddleware

    parameters = inspect.signature(RoutingMiddleware.__init__).parameters.values()
    return {p.name: p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def parse(doc: str) -> tuple[str, dict[str, str], str]:
    """Split the docstring into its introduction, each option's description, and what follows the options."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Options"))
    intro = "\n".join(lines[1:start]).strip()
    options: dict[str, list[str]] = {}
    current: list[str] | None = None
    end = len(lines)
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if _NAME.match(line):
            current = options.setdefault(line, [])
        elif line.startswith("    ") and current is not None:
            current.append(line[4:])
        elif line.strip() and not line.startswith(" "):
            end = i
            break
    described = {name: "\n".join(text).strip() for name, text in options.items()}
    return intro, described, "\n".join(lines[end:]).strip()


def options() -> tuple[list[Option], str]:
    """The options in the docstring's order, and the docstring's closing notes; ValueError if they disagree."""
    _, described, closing = parse(_docstring())
    signature = _signature()
    if list(described) != list(signature):
        missing = sorted(set(signature) - set(described))
        extra = sorted(set(described) - set(signature))
        raise ValueError(
            f"RoutingMiddleware's docstring and signature disagree: "
            f"undocumented {missing}, not in the signature {extra}"
            if missing or extra
            else "RoutingMiddleware's docstring lists the options in another order than the signature"
        )
    rendered = []
    for name, parameter in signature.items():
        annotation = parameter.annotation if isinstance(parameter.annotation, str) else repr(parameter.annotation)
        rendered.append(Option(name, annotation, repr(parameter.default), described[name]))
    return rendered, closing


def options_markdown() -> str:
    """The reference as Markdown: a heading per option (``options.md#forward``), then the closing notes.

    The docstring's markup is reStructuredText's ````literal```` only, which
    Markdown reads as the same code span.
    """
    found, closing = options()
    parts = [f"## `{o.name}`\n\n`{o.name}: {o.annotation} = {o.default}`\n\n{o.description}\n" for o in found]
    return "\n".join(parts) + "\n## Globs, and invalid options\n\n" + closing + "\n"


#: Where in docs/options.md the reference goes.
MARKER = "<!-- litefs-options -->"


def setup(app: Any) -> dict[str, Any]:
    def insert_options(app: Any, docname: str, source: list[str]) -> None:
        if MARKER not in source[0]:
            return
        import litefs_route._middleware

        # Re-read the page when the docstring (or this file) changes, not only the page.
        app.env.note_dependency(litefs_route._middleware.__file__)
        app.env.note_dependency(__file__)
        source[0] = source[0].replace(MARKER, options_markdown())

    app.connect("source-read", insert_options)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
