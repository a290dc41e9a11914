"""A WSGI app that reads LiteFS's state at import (as an app under ``gunicorn --preload`` may) and reports its stream.

``GET /__stream``: this worker's pid, whether its event stream is up, its
connections and mount reads, and the primary it routes to. ``?hold=S``
answers after S seconds: two such requests at once reach two sync workers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from litefs_route.wsgi import PrimaryRoutingMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def inner(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    hold = parse_qs(environ.get("QUERY_STRING", "")).get("hold")
    if hold:
        time.sleep(float(hold[0]))  # keeps this sync worker busy, so the other takes the next request
    routing = app.routing
    subscriber = routing.subscriber
    state = routing.cache.get()
    body = json.dumps(
        {
            "pid": os.getpid(),
            "up": subscriber is not None and subscriber.up,
            "connections": subscriber.connections if subscriber is not None else 0,
            "reads": routing.cache.reads,
            "primary": state.primary_id,
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


app = PrimaryRoutingMiddleware(inner, cache_ttl=3600)
app.routing.cache.get()  # in the master, before the fork: its stream thread starts there
