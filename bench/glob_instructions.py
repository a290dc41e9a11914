"""Instructions per glob match: the matcher against the backtracking regex it replaced, in one run.

Globs are matched on every GET with ``write_on_read`` set, on every write with
``passthrough``. ``PathGlobs`` matches in time linear in the path; the regex
it replaced (``*`` compiled to ``.*``) was one C call but backtracked
super-linearly with several stars. This counts both with ``valgrind
--tool=callgrind`` (one process per cell, run with 0 and with ``--n``
matches; the difference / n), so the hot-path cost is exact, not timed.

``python bench/glob_instructions.py`` prints a table (about a minute). Needs valgrind.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inproc_instructions import instructions_per_call

# (patterns, path): typical configurations, on a path that does not match (the common GET) and one that does.
CASES: list[tuple[list[str], str]] = [
    (["/auth/callback/*"], "/users/42/profile"),
    (["/auth/callback/*"], "/auth/callback/github"),
    (["/static/*", "/healthz"], "/users/42/profile"),
    (["*.png"], "/users/42/profile"),
    (["/api/*/items/*/edit"], "/users/42/profile"),
    (["/api/*/items/*/edit"], "/api/1/items/2/edit"),
    (["/*/*/*/edit"], "/" + "a/" * 8 + "edit"),
]
# The hostile case, measured once per implementation (the regex would take minutes on 2 KB of slashes).
HOSTILE = (["/*/*/*/edit"], "/" * 200)


def regex_matcher(patterns: list[str]) -> Callable[[str], object]:
    """The implementation before issue 24: one regex, ``*`` as ``.*``."""
    alternatives = (
        "".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", p)) for p in patterns
    )
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.DOTALL).fullmatch


def run_cell(implementation: str, patterns: list[str], path: str, n: int) -> None:
    from litefs_route._globs import PathGlobs

    match = regex_matcher(patterns) if implementation == "regex" else PathGlobs(patterns).match
    for _ in range(50):
        match(path)
    for _ in range(n):
        match(path)


def measure(implementation: str, patterns: list[str], path: str, n: int) -> int:
    return instructions_per_call(Path(__file__), [implementation, patterns, path], n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000, help="counted matches per cell (default 5000)")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        implementation, patterns, path, count = json.loads(args.cell)
        run_cell(implementation, patterns, path, count)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    print("| globs | path | regex (before) | PathGlobs | difference |")
    print("|---|---|---:|---:|---:|")
    for patterns, path in [*CASES, HOSTILE]:
        n = args.n if (patterns, path) != HOSTILE else 20
        old, new = measure("regex", patterns, path, n), measure("globs", patterns, path, n)
        shown = path if len(path) <= 30 else f"{path[:12]}... ({len(path)} chars)"
        print(f"| `{', '.join(patterns)}` | `{shown}` | {old:,} | {new:,} | {new - old:+,} |", flush=True)


if __name__ == "__main__":
    main()
