"""The FastAPI app, with ``litefs_route.asgi.PrimaryRoutingMiddleware`` installed by ``add_middleware``.

Inside FastAPI's own stack, as the docs say: so the middleware sees a
handler's exception before Starlette's ServerErrorMiddleware answers 500
(wrapped from outside, the safety net would come too late).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Form

from litefs_route.asgi import PrimaryRoutingMiddleware
from tests.postgres_apps import common

common.log_to_stderr()
app = FastAPI()


# Plain def: FastAPI runs them in its thread pool, as a psycopg app without async does.
@app.post("/items")
def create_item(name: Annotated[str, Form()]) -> dict[str, Any]:
    return common.insert_item(name)


@app.get("/items")
def items() -> dict[str, Any]:
    return common.list_items()


@app.get("/oops")
def oops(name: str) -> dict[str, Any]:
    return common.insert_item(name)


@app.get("/boom")
def boom() -> dict[str, Any]:
    raise RuntimeError("a real bug")


@app.get("/state")
def state() -> dict[str, Any]:
    return common.state()


app.add_middleware(PrimaryRoutingMiddleware, **common.middleware_options())
