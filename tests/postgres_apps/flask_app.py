"""The Flask app, behind ``litefs_route.wsgi.PrimaryRoutingMiddleware`` on its ``wsgi_app``."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from litefs_route.wsgi import PrimaryRoutingMiddleware
from tests.postgres_apps import common

common.log_to_stderr()
app = Flask(__name__)


@app.post("/items")
def create_item() -> ResponseReturnValue:
    return jsonify(common.insert_item(request.form["name"]))


@app.get("/items")
def items() -> ResponseReturnValue:
    return jsonify(common.list_items())


@app.get("/oops")
def oops() -> ResponseReturnValue:
    return jsonify(common.insert_item(request.args["name"]))


@app.get("/boom")
def boom() -> Any:
    raise RuntimeError("a real bug")


@app.get("/state")
def state() -> ResponseReturnValue:
    return jsonify(common.state())


app.wsgi_app = PrimaryRoutingMiddleware(app.wsgi_app, **common.middleware_options())  # type: ignore[method-assign]
