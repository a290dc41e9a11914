"""Instructions per request spent in the middleware, in-process, with a real framework inside.

``inproc.py`` times the middleware in seconds around a trivial inner app;
on a shared machine those microseconds move by ±30 % from run to run, and
with Flask inside they grow although litefs-route runs the same code (Flask's
larger working set evicts ours from the CPU caches between requests: more
time per instruction, not more instructions). This script counts
instructions instead, with ``valgrind --tool=callgrind``, so the cost of each
variant is exact and comparable across runs and machines of one kind.

Method, per cell: the cell's process runs ``--n`` requests, in-process, with
no server (the WSGI app called with a prebuilt environ, the ASGI coroutine
driven with ``send(None)``), after 50 warm-up requests; it runs once with 0
requests and once with ``--n``, and the difference divided by ``--n`` is the
cost of one request with start-up and imports cancelled out. (It runs once
without valgrind before, so that no module is compiled in one run and not
in the other: after an edit that made a difference of up to 1,000 per
request.)
``PYTHONHASHSEED=0`` keeps the runs' dict layouts alike.

Variants: ``bare`` (the inner app alone), ``floor`` (a middleware that only
adds the two tag headers, :mod:`bench.apps.floor`) and ``route``
(litefs-route, cache warm: the path a request takes within ``cache_ttl``).
Inner apps: a trivial callable, or Flask (WSGI) / Starlette (ASGI)
answering "Hello, world!". "litefs-route's own" is route minus floor.

``python bench/inproc_instructions.py`` prints a table (about 10 minutes);
``--json`` prints the numbers. Needs valgrind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
SELF_ID = "e784079b449483"
# (stack, inner, variant, case)
CELLS = [
    (stack, inner, variant, "primary GET")
    for stack, inners in (("WSGI", ("trivial", "flask")), ("ASGI", ("trivial", "starlette")))
    for inner in inners
    for variant in ("bare", "floor", "route")
] + [
    ("WSGI", "trivial", "route", "replica POST"),
    ("ASGI", "trivial", "route", "replica POST"),
]
_COLLECTED = re.compile(r"Collected : ([0-9]+)")


@dataclass(frozen=True)
class Cell:
    stack: str
    inner: str
    variant: str
    case: str
    instructions: int


def _inner_wsgi(inner: str) -> Any:
    if inner == "flask":
        from flask import Flask

        app = Flask("hello")
        app.get("/")(lambda: "Hello, world!")
        return app.wsgi_app
    from bench.inproc import inner_wsgi

    return inner_wsgi


def _inner_asgi(inner: str) -> Any:
    if inner == "starlette":
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def hello(request: Any) -> PlainTextResponse:
            return PlainTextResponse("Hello, world!")

        return Starlette(routes=[Route("/", hello)])
    from bench.inproc import inner_asgi

    return inner_asgi


def run_cell(stack: str, inner: str, variant: str, case: str, n: int) -> None:
    """The body of one measured process: build the app, warm it, serve *n* requests."""
    from bench.apps.floor import FloorASGI, FloorWSGI
    from bench.inproc import asgi_loop, environ_for, scope_for, wsgi_loop
    from bench.mount import make_mounts
    from litefs_route import asgi, wsgi

    primary, replica = make_mounts(Path(tempfile.mkdtemp()))
    mount = str(primary if case == "primary GET" else replica)
    method = "POST" if case == "replica POST" else "GET"
    app: Any
    if stack == "WSGI":
        app = _inner_wsgi(inner)
        if variant == "floor":
            app = FloorWSGI(app)
        elif variant == "route":
            app = wsgi.PrimaryRoutingMiddleware(app, litefs_dir=mount, instance_id=SELF_ID, cache_ttl=3600)
            app.routing.cache.refresh()  # warm: the measured path is the cache hit
        environ = environ_for(method)
        wsgi_loop(app, environ, 50)
        if n:
            wsgi_loop(app, environ, n)
    else:
        app = _inner_asgi(inner)
        if variant == "floor":
            app = FloorASGI(app)
        elif variant == "route":
            app = asgi.PrimaryRoutingMiddleware(app, litefs_dir=mount, instance_id=SELF_ID, cache_ttl=3600)
            app.routing.cache.refresh()
        scope = scope_for(method)
        asgi_loop(app, scope, 50)
        if n:
            asgi_loop(app, scope, n)


def measure(stack: str, inner: str, variant: str, case: str, n: int) -> Cell:
    instructions = instructions_per_call(Path(__file__), [stack, inner, variant, case], n)
    return Cell(stack, inner, variant, case, instructions)


def instructions_per_call(script: Path, cell: list[Any], n: int, *, root: Path | None = None) -> int:
    """Instructions one call costs: *script* ``--cell`` run under callgrind with 0 and *n* calls, the difference / *n*.

    The cell's arguments are *cell* then the call count, as JSON; start-up and imports cancel out.
    *root*: the checkout whose packages the cell imports (default: this one).
    """
    root = ROOT if root is None else root.resolve()
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(root)}
    # Once without valgrind first: a module changed since its bytecode was cached is compiled
    # by the first run, which would count the compiling in the 0-call run only.
    subprocess.run(
        [sys.executable, str(script.resolve()), "--cell", json.dumps([*cell, 0])], env=env, cwd=root, check=True
    )
    totals = []
    for count in (0, n):
        command = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(script.resolve()),
            "--cell",
            json.dumps([*cell, count]),
        ]
        out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, check=True)
        match = _COLLECTED.search(out.stderr)
        if match is None:
            raise RuntimeError(f"no callgrind total for {cell}:\n{out.stderr[-2000:]}")
        totals.append(int(match[1]))
    return (totals[1] - totals[0]) // n


def markdown(cells: list[Cell]) -> str:
    by_key = {(c.stack, c.inner, c.variant, c.case): c.instructions for c in cells}
    lines = [
        "| stack | inner app | request | bare | floor | litefs-route | litefs-route's own (route - floor) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for stack, inner, variant, case in CELLS:
        if variant != "route":
            continue
        route = by_key[(stack, inner, "route", case)]
        bare, floor = by_key.get((stack, inner, "bare", case)), by_key.get((stack, inner, "floor", case))
        if bare is None or floor is None:  # the replay: no bare/floor counterpart
            lines.append(f"| {stack} | {inner} | {case} | | | {route:,} | |")
        else:
            lines.append(f"| {stack} | {inner} | {case} | {bare:,} | {floor:,} | {route:,} | {route - floor:+,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="counted requests per cell (default 2000)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        stack, inner, variant, case, count = json.loads(args.cell)
        run_cell(stack, inner, variant, case, count)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    cells = []
    for stack, inner, variant, case in CELLS:
        cell = measure(stack, inner, variant, case, args.n)
        print(f"{stack} {inner} {variant} {case}: {cell.instructions:,} instructions per request", file=sys.stderr)
        cells.append(cell)
    print(json.dumps([asdict(c) for c in cells]) if args.json else markdown(cells))


if __name__ == "__main__":
    main()
