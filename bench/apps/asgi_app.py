"""Starlette hello-world, served by uvicorn: ``uvicorn bench.apps.asgi_app:app``.

``BENCH_VARIANT``: ``bare`` (no middleware), ``floor`` (:mod:`bench.apps.floor`),
``naive`` (:mod:`bench.apps.naive`) or ``route`` (litefs-route's :class:`~litefs_route.asgi.PrimaryRoutingMiddleware`,
default options; ``BENCH_CACHE_TTL`` overrides ``cache_ttl``, for diagnosis).
``LITEFS_DIR`` is the mount. In the ``route`` variant, ``GET /__reads`` (a
passthrough path) answers how many times the mount was read.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bench.apps.floor import FloorASGI
from bench.apps.naive import ASGIApp, NaiveASGI
from litefs_route.asgi import PrimaryRoutingMiddleware

VARIANT = os.environ.get("BENCH_VARIANT", "bare")
# For diagnosis only (the report always uses the default, 1.0).
CACHE_TTL = float(os.environ.get("BENCH_CACHE_TTL", "1.0"))
middleware: PrimaryRoutingMiddleware | None = None


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("Hello, world!")


async def reads(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(middleware.routing.cache.reads if middleware is not None else -1))


inner = Starlette(routes=[Route("/", hello, methods=["GET", "POST"]), Route("/__reads", reads)])
app: ASGIApp
if VARIANT == "bare":
    app = inner
elif VARIANT == "floor":
    app = FloorASGI(inner)
elif VARIANT == "naive":
    app = NaiveASGI(inner, os.environ["LITEFS_DIR"])
elif VARIANT == "route":
    app = middleware = PrimaryRoutingMiddleware(inner, passthrough=["/__reads"], cache_ttl=CACHE_TTL)
else:
    raise SystemExit(f"BENCH_VARIANT must be bare, floor, naive or route, not {VARIANT!r}")
