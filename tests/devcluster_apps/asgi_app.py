"""An ASGI (Starlette) test app behind litefs_route.asgi.PrimaryRoutingMiddleware.

- ``GET /whoami``: the instance id.
- ``POST /write`` (form ``id``): records a write; ``?redirect=1`` answers 303 to ``/item/<id>``.
- ``GET /item/<id>``: the write as this instance's copy has it, or 404.
- ``GET|POST /unguarded-write/<id>``: a write whose SQLite errors propagate (a GET: hidden, no ``ensure_primary()``).
- ``POST /held-write/<id>?hold=open|commit``: a write held where the test says (``common.held_write``).
- ``GET /stream``: three chunks; chunk N > 1 is sent only after ``POST /release/N``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from litefs_route.asgi import PrimaryRoutingMiddleware

from . import common

_gates: dict[int, asyncio.Event] = {}


def _gate(n: int) -> asyncio.Event:
    return _gates.setdefault(n, asyncio.Event())


async def whoami(request: Request) -> Response:
    return PlainTextResponse(common.INSTANCE)


async def write(request: Request) -> Response:
    form = await request.form()
    write_id = str(form["id"])
    status, payload = common.record_write(write_id, str(form.get("body", "")))
    if status == 200 and request.query_params.get("redirect"):
        return RedirectResponse(f"/item/{write_id}", status_code=303)
    return JSONResponse(payload, status_code=status)


async def item(request: Request) -> Response:
    found = common.read_write(request.path_params["id"])
    return JSONResponse(found or {"read_on": common.INSTANCE}, status_code=200 if found else 404)


def held_write(request: Request) -> Response:
    return JSONResponse(common.held_write(request.path_params["id"], request.query_params.get("hold", "commit")))


def unguarded_write(request: Request) -> Response:
    return JSONResponse(common.record_write_unguarded(request.path_params["id"]))


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"chunk-1;"
        for n in (2, 3):
            try:
                await asyncio.wait_for(_gate(n).wait(), timeout=20)
            except asyncio.TimeoutError:
                yield b"gate-timeout;"
                return
            yield f"chunk-{n};".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def release(request: Request) -> Response:
    _gate(int(request.path_params["n"])).set()
    return PlainTextResponse("released")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    common.init_schema()
    yield


app = Starlette(
    routes=[
        Route("/whoami", whoami),
        Route("/write", write, methods=["POST"]),
        Route("/item/{id}", item),
        Route("/unguarded-write/{id}", unguarded_write, methods=["GET", "POST"]),
        Route("/held-write/{id}", held_write, methods=["POST"]),
        Route("/stream", stream),
        # A read by method, but it must not be replayed: passthrough.
        Route("/release/{n:int}", release, methods=["POST"]),
    ],
    middleware=[Middleware(PrimaryRoutingMiddleware, **common.MIDDLEWARE_OPTIONS, passthrough=["/release/*"])],
    lifespan=lifespan,
)
