"""What metrics cost: instructions per request with litefs-route's metrics off, Prometheus on, OpenTelemetry on.

The method of :mod:`bench.inproc_instructions` (callgrind, in-process, the
cache warm, a trivial inner app; 0 and ``--n`` requests, the difference
divided by ``--n``), with three variants of the middleware:

``off``         nothing registered (the default: each count loops over an empty tuple)
``prometheus``  ``litefs_route.prometheus.register()`` into a fresh registry
``otel``        ``litefs_route.otel.instrument()`` on the SDK's ``MeterProvider`` with an
                in-memory reader (never collected while measured), no span recording

Requests carry ``Fly-Request-Id``, as every request on Fly does. Cases: a GET
on the primary (counted ``ran``), a POST on a replica (replayed), and, WSGI
only, a POST replayed to the primary (``fly-replay-src`` with ``t``: the
replay-latency histogram; its fresh mount read suspends an ASGI request,
which the in-process ASGI loop cannot drive).

``python bench/metrics_instructions.py`` prints a table (about 5 minutes; needs
valgrind). ``--root DIR`` measures another checkout of the repository (the
same script, that tree's ``litefs_route`` and ``bench``): ``git worktree add
/tmp/base <commit>`` then ``--root /tmp/base --variants off prometheus`` gives
the numbers before a change.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, "") and not os.environ.get("PYTHONPATH"):  # a cell of --root imports that tree's
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SELF_ID = "e784079b449483"
VARIANTS = ("off", "prometheus", "otel")
CASES = [("WSGI", "primary GET"), ("WSGI", "replica POST"), ("WSGI", "replayed POST"), ("ASGI", "primary GET")]
CASES += [("ASGI", "replica POST")]
_FLY_REQUEST_ID = "01JF3Z7Q8X9YV2W4K6M8N0P1R3"


def run_cell(stack: str, variant: str, case: str, n: int) -> None:
    """The body of one measured process: build the app, warm it, serve *n* requests."""
    import litefs_route
    from bench.inproc import asgi_loop, environ_for, inner_asgi, inner_wsgi, scope_for, wsgi_loop
    from bench.mount import make_mounts
    from litefs_route import asgi, wsgi

    print(f"litefs_route from {litefs_route.__file__}", file=sys.stderr)
    if variant == "prometheus":
        import prometheus_client

        import litefs_route.prometheus

        litefs_route.prometheus.register(prometheus_client.CollectorRegistry())
    elif variant == "otel":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        import litefs_route.otel

        litefs_route.otel.instrument(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    primary, replica = make_mounts(Path(tempfile.mkdtemp()))
    mount = str(replica if case == "replica POST" else primary)
    method = "GET" if case == "primary GET" else "POST"
    options: dict[str, Any] = {"litefs_dir": mount, "instance_id": SELF_ID, "cache_ttl": 3600}
    if stack == "WSGI":
        app: Any = wsgi.PrimaryRoutingMiddleware(inner_wsgi, **options)
        app.routing.cache.refresh()  # warm: the measured path is the cache hit
        environ = {**environ_for(method), "HTTP_FLY_REQUEST_ID": _FLY_REQUEST_ID}
        if case == "replayed POST":  # a millisecond after the replica answered
            environ["HTTP_FLY_REPLAY_SRC"] = f"instance=x;region=ams;t={int(time.time() * 1e6) - 1000};state=y"
        wsgi_loop(app, environ, 50)
        if n:
            wsgi_loop(app, environ, n)
    else:
        app = asgi.PrimaryRoutingMiddleware(inner_asgi, **options)
        app.routing.cache.refresh()
        scope = scope_for(method)
        scope["headers"] = [*scope["headers"], (b"fly-request-id", _FLY_REQUEST_ID.encode())]
        asgi_loop(app, scope, 50)
        if n:
            asgi_loop(app, scope, n)


def main(argv: list[str] | None = None) -> None:
    from bench.inproc_instructions import instructions_per_call

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="counted requests per cell (default 2000)")
    parser.add_argument("--root", type=Path, help="measure this checkout's litefs_route (default: this one)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        stack, variant, case, count = json.loads(args.cell)
        run_cell(stack, variant, case, count)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    results: dict[str, dict[str, int]] = {}
    for stack, case in CASES:
        row = results.setdefault(f"{stack} {case}", {})
        for variant in args.variants:
            row[variant] = instructions_per_call(Path(__file__), [stack, variant, case], args.n, root=args.root)
            print(f"{stack} {case} {variant}: {row[variant]:,} instructions per request", file=sys.stderr)
    if args.json:
        print(json.dumps(results))
        return
    print("| request | " + " | ".join(args.variants) + " |")
    print("|---|" + "---:|" * len(args.variants))
    for name, row in results.items():
        off = row.get("off")
        cells = [
            f"{row[v]:,}" if v == "off" or off is None else f"{row[v]:,} ({row[v] - off:+,})" for v in args.variants
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
