"""Decision cost: microseconds per request spent in litefs-route's own code.

No server, no sockets, no event loop: each middleware is called with a
prebuilt ASGI scope / WSGI environ around a trivial inner app, and compared
with the trivial inner app called alone on the same request. The ASGI
coroutine is driven with ``coro.send(None)``: with the cache warm, nothing in
the path suspends (the harness fails loudly if something does).

Method: every case runs ``--n`` requests per round; cases are interleaved
within each round, ``--rounds`` rounds; the best round ("min", as timeit
recommends: the least disturbed by other processes) and the median round are
reported, and the cost is the middleware case minus the inner app alone on
the same request. The cache TTL is set to an hour so that no refresh falls
inside a timed round: with the default 1 s TTL a refresh (one read of the
mount, in a worker thread on ASGI) happens once per second per process, which
is what ``run.py``'s "state reads" section measures.

``python bench/inproc.py`` prints a table; ``--json`` prints the numbers for
``run.py``; ``--profile`` prints cProfile output of each middleware case.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.apps.naive import ASGIApp, Message, NaiveASGI, NaiveWSGI, Receive, Scope, Send
from bench.mount import make_mounts
from litefs_route.asgi import PrimaryRoutingMiddleware as RouteASGI
from litefs_route.wsgi import PrimaryRoutingMiddleware as RouteWSGI

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"13")],
}
_BODY: Message = {"type": "http.response.body", "body": b"Hello, world!"}
_WSGI_HEADERS = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "13")]
_HELLO = [b"Hello, world!"]


async def inner_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    await send(_START)
    await send(_BODY)


def inner_wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", _WSGI_HEADERS)
    return _HELLO


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    pass


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
    return len


def scope_for(method: str) -> Scope:
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench/1"), (b"accept", b"*/*")]
    if method == "POST":
        headers += [(b"content-type", b"application/x-www-form-urlencoded"), (b"content-length", b"18")]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def environ_for(method: str) -> WSGIEnvironment:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "bench/1",
        "HTTP_ACCEPT": "*/*",
        "wsgi.url_scheme": "http",
        "wsgi.input_terminated": True,
    }
    if method == "POST":
        environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
        environ["CONTENT_LENGTH"] = "18"
    return environ


def asgi_loop(app: ASGIApp, scope: Scope, n: int) -> float:
    """Seconds per request for *n* calls of *app* (driven without a loop)."""
    receive, send = _receive, _send
    t0 = time.perf_counter()
    for _ in range(n):
        coro = app(scope, receive, send)
        try:
            coro.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            pass
        else:
            coro.close()  # type: ignore[attr-defined]
            raise RuntimeError("the ASGI path suspended: the cache was not warm")
    return (time.perf_counter() - t0) / n


def wsgi_loop(app: WSGIApplication, environ: WSGIEnvironment, n: int) -> float:
    start_response = _start_response
    t0 = time.perf_counter()
    for _ in range(n):
        for _chunk in app(environ, start_response):
            pass
    return (time.perf_counter() - t0) / n


@dataclass(frozen=True)
class Case:
    stack: str  # "ASGI" / "WSGI"
    name: str  # e.g. "litefs-route, replica POST (replay)"
    baseline: str  # the name of the inner-app-alone case on the same request
    run: Callable[[int], float]


def build_cases(primary_dir: str, replica_dir: str) -> list[Case]:
    ttl = 3600.0
    cases: list[Case] = []
    for method in ("GET", "POST"):
        scope, environ = scope_for(method), environ_for(method)
        base = f"inner app alone, {method}"
        cases.append(Case("ASGI", base, base, partial(asgi_loop, inner_asgi, scope)))
        cases.append(Case("WSGI", base, base, partial(wsgi_loop, inner_wsgi, environ)))
    for mount, where, method in (
        (primary_dir, "primary", "GET"),
        (replica_dir, "replica", "GET"),
        (replica_dir, "replica", "POST"),
    ):
        scope, environ = scope_for(method), environ_for(method)
        base = f"inner app alone, {method}"
        label = f"{where} {method}" + (" (replay)" if where == "replica" and method == "POST" else "")
        asgi_mw = RouteASGI(inner_asgi, litefs_dir=mount, instance_id="bench-self", cache_ttl=ttl)
        wsgi_mw = RouteWSGI(inner_wsgi, litefs_dir=mount, instance_id="bench-self", cache_ttl=ttl)
        for mw in (asgi_mw, wsgi_mw):
            mw.routing.cache.refresh()  # warm: the timed path is the cache hit
        cases.append(Case("ASGI", f"litefs-route, {label}", base, partial(asgi_loop, asgi_mw, scope)))
        cases.append(Case("WSGI", f"litefs-route, {label}", base, partial(wsgi_loop, wsgi_mw, environ)))
        naive_a = NaiveASGI(inner_asgi, mount)
        naive_w = NaiveWSGI(inner_wsgi, mount)
        cases.append(Case("ASGI", f"naive, {label}", base, partial(asgi_loop, naive_a, scope)))
        cases.append(Case("WSGI", f"naive, {label}", base, partial(wsgi_loop, naive_w, environ)))
    return cases


@dataclass(frozen=True)
class Row:
    stack: str
    name: str
    min_us: float
    median_us: float
    delta_min_us: float
    delta_median_us: float


def measure(rounds: int, n: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="litefs-bench-") as tmp:
        primary_dir, replica_dir = make_mounts(Path(tmp))
        cases = build_cases(str(primary_dir), str(replica_dir))
        for case in cases:  # warm: the caches, the code paths, the allocator
            case.run(max(1, n // 10))
        samples: dict[tuple[str, str], list[float]] = {(c.stack, c.name): [] for c in cases}
        for r in range(rounds):
            order = cases[r % len(cases) :] + cases[: r % len(cases)]  # rotate: no case is always first
            for case in order:
                samples[(case.stack, case.name)].append(case.run(n) * 1e6)
    rows = []
    for case in cases:
        mine, base = samples[(case.stack, case.name)], samples[(case.stack, case.baseline)]
        rows.append(
            Row(
                case.stack,
                case.name,
                min(mine),
                statistics.median(mine),
                min(mine) - min(base),
                statistics.median(mine) - statistics.median(base),
            )
        )
    return sorted(rows, key=lambda row: (row.stack, row.name))


def profile(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="litefs-bench-") as tmp:
        primary_dir, replica_dir = make_mounts(Path(tmp))
        for case in build_cases(str(primary_dir), str(replica_dir)):
            if not case.name.startswith("litefs-route"):
                continue
            case.run(1000)
            profiler = cProfile.Profile()
            profiler.enable()
            case.run(n)
            profiler.disable()
            print(f"\n### {case.stack}: {case.name} ({n} calls)\n")
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(14)


def markdown(rows: list[Row]) -> str:
    lines = [
        "| stack | case | µs/request, min | median | Δ vs inner app alone, min | Δ median |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        delta = row.name.startswith("inner")
        lines.append(
            f"| {row.stack} | {row.name} | {row.min_us:.2f} | {row.median_us:.2f} | "
            + ("—" if delta else f"**{row.delta_min_us:+.2f}**")
            + " | "
            + ("—" if delta else f"{row.delta_median_us:+.2f}")
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("-n", type=int, default=5000, help="requests per case per round")
    parser.add_argument("--cpu", type=int, default=0, help="pin to this CPU (-1: do not pin)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    if args.profile:
        profile(args.n * 10)
        return
    rows = measure(args.rounds, args.n)
    if args.json:
        print(json.dumps([row.__dict__ for row in rows]))
    else:
        print(markdown(rows))


if __name__ == "__main__":
    main()
