"""Flask hello-world, served by gunicorn: ``gunicorn bench.apps.wsgi_app:app``.

``BENCH_VARIANT``: ``bare`` (no middleware), ``floor`` (:mod:`bench.apps.floor`),
``naive`` (:mod:`bench.apps.naive`) or ``route`` (litefs-route's :class:`~litefs_route.wsgi.PrimaryRoutingMiddleware`,
default options, installed the documented way: ``app.wsgi_app = ...``).
``LITEFS_DIR`` is the mount. In the ``route`` variant, ``GET /__reads`` (a
passthrough path) answers how many times the mount was read.
"""

from __future__ import annotations

import os

from flask import Flask

from bench.apps.floor import FloorWSGI
from bench.apps.naive import NaiveWSGI
from litefs_route.wsgi import PrimaryRoutingMiddleware

VARIANT = os.environ.get("BENCH_VARIANT", "bare")
# For diagnosis only (the report always uses the default, 1.0).
CACHE_TTL = float(os.environ.get("BENCH_CACHE_TTL", "1.0"))
middleware: PrimaryRoutingMiddleware | None = None

app = Flask(__name__)


@app.route("/", methods=["GET", "POST"])
def hello() -> str:
    return "Hello, world!"


@app.route("/__reads")
def reads() -> str:
    return str(middleware.routing.cache.reads if middleware is not None else -1)


if VARIANT == "floor":
    app.wsgi_app = FloorWSGI(app.wsgi_app)  # type: ignore[method-assign]
elif VARIANT == "naive":
    app.wsgi_app = NaiveWSGI(app.wsgi_app, os.environ["LITEFS_DIR"])  # type: ignore[method-assign]
elif VARIANT == "route":
    middleware = PrimaryRoutingMiddleware(app.wsgi_app, passthrough=["/__reads"], cache_ttl=CACHE_TTL)
    app.wsgi_app = middleware  # type: ignore[method-assign]
elif VARIANT != "bare":
    raise SystemExit(f"BENCH_VARIANT must be bare, floor, naive or route, not {VARIANT!r}")
