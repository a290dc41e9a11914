"""The ``litefs-options`` directive: the middleware's options, read at build time.

The options are defined once, as the keyword parameters of
``litefs_route._middleware.RoutingMiddleware``, and documented once, in its
docstring (which ``help(PrimaryRoutingMiddleware)`` shows too). This directive
renders that docstring's option list with each option's type and default from
the signature, so the reference cannot drift from the code. An option the
docstring documents but the signature lacks, or the other way round, fails the
build.

In a MyST page::

    ```{litefs-options}
    ```
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


def options_rst() -> str:
    """The reference as reStructuredText: one definition per option, then the closing notes."""
    found, closing = options()
    parts = []
    for option in found:
        body = "\n".join("   " + line if line else "" for line in option.description.splitlines())
        parts.append(f"``{option.name}: {option.annotation} = {option.default}``\n{body}\n")
    return "\n".join(parts) + "\n" + closing + "\n"


def setup(app: Any) -> dict[str, Any]:
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class LitefsOptions(SphinxDirective):
        """Renders :func:`options_rst` in place."""

        has_content = False

        def run(self) -> list[nodes.Node]:
            container = nodes.container(classes=["litefs-options"])
            source = self.get_source_info()[0] or "litefs-options"
            self.state.nested_parse(StringList(options_rst().splitlines(), source=source), 0, container)
            return [container]

    app.add_directive("litefs-options", LitefsOptions)
    # Rebuild the page whenever the package changes (the directive reads it).
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
