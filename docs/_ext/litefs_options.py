"""The options reference of docs/options.md, read from the middleware at build time; stale references.

The options are defined once, as the keyword parameters of
``litefs_route._middleware.RoutingMiddleware``, and documented once, in its
docstring (which ``help(PrimaryRoutingMiddleware)`` shows too). This extension
replaces the marker ``<!-- litefs-options -->`` in a page, as the page is
read, with that docstring's option list, each option a heading (so pages link
to ``options.md#forward``) with its type and default from the signature: the
reference cannot drift from the code. An option the docstring documents but
the signature lacks, or the other way round, fails the build.

It also checks every page for the repository's files (``tests/test_cli.py``)
and private modules (``litefs_route._decision``) it names: one that was
renamed or removed fails the build, as a broken link does.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
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


#: The repository: the paths and modules the pages name are checked against it.
ROOT = Path(__file__).resolve().parents[2]
_PATH = re.compile(r"(?<![\w/.-])((?:litefs_route|devcluster|tests|bench|examples|docs|\.ci)/[\w./*-]*[\w/*])")
_MODULE = re.compile(r"\b(litefs_route(?:_devcluster)?(?:\.\w+)+)")
_PACKAGES = {
    "litefs_route": ROOT / "litefs_route",
    "litefs_route_devcluster": ROOT / "devcluster" / "litefs_route_devcluster",
}


def _module_missing(dotted: str) -> str | None:
    """The first module *dotted* names that does not exist, if any.

    A component that is not a module may be an attribute (``litefs_route.promote``)
    or a metric's name (``litefs_route.lag``); it ends the check, but for a
    private one (``litefs_route._decision``), and for the dev cluster's lowercase
    names (``litefs_route_devcluster.demo``), which must be modules.
    """
    first, *rest = dotted.split(".")
    here = _PACKAGES[first]
    for i, part in enumerate(rest):
        if (here / part).is_dir():
            here = here / part
            continue
        if (here / f"{part}.py").is_file():
            return None
        private = part.startswith("_") and not part.startswith("__")
        devcluster_module = first == "litefs_route_devcluster" and i == 0 and part.islower()
        return ".".join([first, *rest[: i + 1]]) if private or devcluster_module else None
    return None


def stale_references(text: str) -> list[tuple[int, str]]:
    """(line, what) for each repository path or module *text* names that does not exist."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in _PATH.finditer(line):
            path = match.group(1)
            if path.startswith("bench/results/") or path.startswith("docs/_build"):
                continue  # written by the benchmarks / the build
            if not any(ROOT.glob(path.rstrip("/"))):
                found.append((number, f"the path {path} does not exist"))
        for match in _MODULE.finditer(line):
            missing = _module_missing(match.group(1))
            if missing:
                found.append((number, f"the module {missing} does not exist"))
    return found


#: Where in docs/options.md the reference goes.
MARKER = "<!-- litefs-options -->"


def setup(app: Any) -> dict[str, Any]:
    from sphinx.util import logging

    logger = logging.getLogger(__name__)

    def check_and_insert(app: Any, docname: str, source: list[str]) -> None:
        # A page that names a file or a module that is gone (renamed, split) fails the build.
        for line, what in stale_references(source[0]):
            logger.warning("stale reference: %s", what, location=(docname, line))
        if MARKER not in source[0]:
            return
        import litefs_route._middleware

        # Re-read the page when the docstring (or this file) changes, not only the page.
        app.env.note_dependency(litefs_route._middleware.__file__)
        app.env.note_dependency(__file__)
        source[0] = source[0].replace(MARKER, options_markdown())

    app.connect("source-read", check_and_insert)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
