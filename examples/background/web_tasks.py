"""The web side of the worker process group: the write its tasks ask the primary for.

Served by every ``app`` Machine inside the routing middleware; a worker
Machine (never primary) runs it with ``call_on_primary("tick")`` (see
``celery_app.tick_on_primary``)::

    gunicorn examples.background.web_tasks:app

Needs ``$LITEFS_ROUTE_FORWARD_SECRET`` on every Machine (the callers too).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from examples.background import jobs
from litefs_route import primary_task, serve_tasks_wsgi
from litefs_route.wsgi import PrimaryRoutingMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


@primary_task("tick")
def tick() -> dict[str, int]:
    return {"id": jobs.record("call_on_primary")}


def hello(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


app = PrimaryRoutingMiddleware(serve_tasks_wsgi(hello))
