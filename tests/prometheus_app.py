"""A Flask app with litefs-route's Prometheus metrics, for real servers (gunicorn with several workers).

Configured from the environment: ``LITEFS_DIR``, ``FLY_MACHINE_ID``, and
``PROMETHEUS_MULTIPROC_DIR`` for prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import os

from flask import Flask, Response

import litefs_route.prometheus
from litefs_route import ensure_primary
from litefs_route.wsgi import PrimaryRoutingMiddleware

litefs_route.prometheus.register()

app = Flask(__name__)


@app.post("/w")
def w() -> str:
    return "wrote"


@app.get("/guarded")
def guarded() -> str:
    ensure_primary()
    return "ran guarded"


@app.get("/read")
def read() -> str:
    return f"read in {os.getpid()}"


@app.get("/metrics")
def metrics() -> Response:
    body, content_type = litefs_route.prometheus.exposition()
    return Response(body, content_type=content_type)


app.wsgi_app = PrimaryRoutingMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, cache_ttl=3600, primary_wait=0.3, litefs_api_url="off", database="app.db", consistency_wait=0.05
)
