"""litefs-route's log records carry their facts as fields: through a real JSON formatter, on real servers.

python-json-logger writes each record of the ``litefs_route`` logger as a
JSON line; the facts (``litefs_route_*``, ``litefs_route._log_fields``) are
its keys. Werkzeug and uvicorn in this process, Django (gunicorn, uvicorn)
in its own, logging to a file through the same formatter.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pythonjsonlogger.json import JsonFormatter

from litefs_route import asgi as asgi_adapter
from litefs_route import wsgi as wsgi_adapter
from litefs_route_devcluster import free_port
from tests.support import Mount, serve_asgi, serve_wsgi, wait_until
from tests.test_django import django_server
from tests.test_readonly_safety_net import readonly_database, write

ME = "e784079b449483"
PRIMARY = "3d8d9e5b711e68"
FORMAT = "%(levelname)s %(name)s %(message)s"
# Fly's proxy sent the replay back: it could not reach the primary (a 503, and a warning worth a look).
SENT_BACK = {"fly-replay-failed": f"instance={PRIMARY};reason=timeout;elapsed_ms=5000"}

Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    """The litefs_route logger's records at INFO and above, as the JSON lines python-json-logger writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(FORMAT))
    logger = logging.getLogger("litefs_route")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def flask_app(database: Path, options: dict[str, Any]) -> Any:
    from flask import Flask

    app = Flask("log_fields")
    app.post("/w", endpoint="w")(lambda: "wrote")
    app.get("/read", endpoint="read")(lambda: "read")

    @app.post("/sqlite")
    def sqlite() -> str:
        write(database)  # SQLite refuses it: the safety net's case
        return "wrote"

    app.wsgi_app = wsgi_adapter.PrimaryRoutingMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


def starlette_app(database: Path, options: dict[str, Any]) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def text(request: Request) -> Response:
        return PlainTextResponse("ok")

    def sqlite(request: Request) -> Response:  # sync: Starlette runs it in a worker thread
        write(database)
        return PlainTextResponse("wrote")

    return Starlette(
        routes=[Route("/w", text, methods=["POST"]), Route("/read", text), Route("/sqlite", sqlite, methods=["POST"])],
        middleware=[Middleware(asgi_adapter.PrimaryRoutingMiddleware, **options)],
    )


def only(lines: list[dict[str, Any]], event: str) -> dict[str, Any]:
    [line] = [line for line in lines if line.get("litefs_route_event") == event]
    return line


@pytest.mark.parametrize("stack", ["flask-werkzeug", "starlette-uvicorn"])
def test_records_carry_their_facts_as_json_keys(stack: str, mount: Mount, tmp_path: Path, json_lines: Lines) -> None:
    mount.make_primary()
    database = readonly_database(tmp_path / "readonly.db")
    options = {"litefs_dir": str(mount.path), "instance_id": ME, "cache_ttl": 3600, "litefs_api_url": "off"}
    options["primary_wait"] = 0.1
    app = flask_app(database, options) if stack.startswith("flask") else starlette_app(database, options)
    server = serve_wsgi(app) if stack.startswith("flask") else serve_asgi(app)
    with server as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/read").status_code == 200  # the first reading: this node is the primary (cached)
        mount.make_replica(PRIMARY)  # the primary moves; the cached reading does not know yet
        # Routed as the primary, SQLite refuses its write: replayed to the primary the mount names now.
        assert client.post("/sqlite", headers={"X-Request-Id": "req-42"}).status_code == 409
        assert client.post("/w").status_code == 409  # a normal replay: no record at INFO or above
        # Sent back by Fly's proxy, twice: one warning (the second is rate-limited to DEBUG).
        both_ids = {**SENT_BACK, "Fly-Request-Id": "01JFLYREQ", "X-Request-Id": "req-43"}
        assert [client.post("/w", headers=both_ids).status_code for _ in range(2)] == [503, 503]
        # A request id that is not one (a space; over 128 characters) is left out, the rest is logged.
        mount.make_primary()
        replayed = {"fly-replay-src": "instance=x;state=litefs-route-hop-1", "X-Request-Id": "a b"}
        assert client.post("/sqlite", headers=replayed).status_code == 503  # refused here, on the primary

    lines = json_lines()
    assert all(line["name"] == "litefs_route" and "litefs_route_event" in line for line in lines), lines
    changes = [line for line in lines if line["litefs_route_event"] == "role_changed"]
    assert changes[0]["litefs_route_role"] == "primary"
    assert changes[1]["litefs_route_role"] == "replica"
    assert changes[1]["litefs_route_previous_role"] == "primary"
    assert changes[1]["litefs_route_primary"] == PRIMARY

    refused = [line for line in lines if line["litefs_route_event"] == "safety_net"]
    assert len(refused) == 2
    replayed_line, refused_here = refused
    assert replayed_line["levelname"] == "WARNING"
    assert "readonly" in replayed_line["litefs_route_reason"]
    assert {k: v for k, v in replayed_line.items() if k != "litefs_route_reason" and k.startswith("litefs_route_")} == {
        "litefs_route_event": "safety_net",
        "litefs_route_status": 409,
        "litefs_route_target": PRIMARY,
        "litefs_route_primary": PRIMARY,
        "litefs_route_method": "POST",
        "litefs_route_path": "/sqlite",
        "litefs_route_request_id": "req-42",
    }
    assert refused_here["litefs_route_status"] == 503
    assert "litefs_route_request_id" not in refused_here
    assert refused_here["litefs_route_path"] == "/sqlite"

    sent_back = only(lines, "unavailable_replay_failed")  # once: rate-limited
    assert sent_back["levelname"] == "WARNING"
    assert sent_back["litefs_route_status"] == 503
    assert sent_back["litefs_route_target"] == PRIMARY
    assert sent_back["litefs_route_request_id"] == "01JFLYREQ"  # Fly's id first
    assert sent_back["litefs_route_method"] == "POST"
    assert sent_back["litefs_route_path"] == "/w"
    assert "timeout" in sent_back["litefs_route_reason"]
    assert not [line for line in lines if line["levelname"] in ("ERROR", "CRITICAL")]


def test_waits_are_logged_at_debug_with_the_seconds_waited(mount: Mount, json_lines: Lines) -> None:
    mount.make_no_primary()
    logging.getLogger("litefs_route").setLevel(logging.DEBUG)  # the fixture restores it
    options = {"litefs_dir": str(mount.path), "instance_id": ME, "cache_ttl": 0, "litefs_api_url": "off"}
    options["primary_wait"] = 0.1
    with serve_wsgi(flask_app(Path("/nonexistent"), options)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/w").status_code == 503
    wait = only(json_lines(), "primary_wait")
    assert wait["levelname"] == "DEBUG"
    assert wait["litefs_route_outcome"] == "timed_out"
    assert wait["litefs_route_waited_seconds"] >= 0.1 - 0.05  # primary_wait, less one poll (50 ms)
    counted = [line for line in json_lines() if line["litefs_route_event"] == "counted"]
    assert {"litefs_route_counter": "unavailable_no_primary", "litefs_route_amount": 1} in [
        {k: v for k, v in line.items() if k in ("litefs_route_counter", "litefs_route_amount")} for line in counted
    ]


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_django_records_carry_their_facts(tmp_path: Path, mount: Mount, server: str) -> None:
    mount.make_replica(PRIMARY)
    log = tmp_path / "litefs_route.jsonl"
    options = {"cache_ttl": 3600, "litefs_api_url": "off"}
    with (
        django_server(
            tmp_path, server, mount.path, ME, debug=False, options=options, env={"JSON_LOG_FILE": str(log)}
        ) as django,
        httpx.Client(base_url=django.url, timeout=30) as client,
    ):
        headers = {**SENT_BACK, "Fly-Request-Id": "01JDJANGO"}
        assert client.post("/write", data={"id": "1"}, headers=headers).status_code == 503

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

        wait_until(lambda: any(line.get("litefs_route_event") == "unavailable_replay_failed" for line in lines()))
    sent_back = only(lines(), "unavailable_replay_failed")
    assert sent_back["litefs_route_request_id"] == "01JDJANGO"
    assert sent_back["litefs_route_path"] == "/write"
    assert sent_back["litefs_route_target"] == PRIMARY
    assert sent_back["litefs_route_status"] == 503
    assert only(lines(), "role_changed")["litefs_route_primary"] == PRIMARY


@pytest.mark.parametrize("stack", ["flask-werkzeug", "starlette-uvicorn"])
def test_a_forward_that_could_not_be_sent_is_logged_with_its_request(
    stack: str, mount: Mount, json_lines: Lines
) -> None:
    """Forward mode, the primary unreachable: a 503, and one warning naming the request, never its query or secret."""
    mount.make_replica(PRIMARY)
    options = {"litefs_dir": str(mount.path), "instance_id": ME, "cache_ttl": 3600, "litefs_api_url": "off"}
    secret = "s3cret-forward-key-0123456789"
    options |= {"forward": "always", "forward_secret": secret, "forward_url": f"http://127.0.0.1:{free_port()}"}
    app = flask_app(Path("/nonexistent"), options) if stack.startswith("flask") else starlette_app(Path("/x"), options)
    server = serve_wsgi(app) if stack.startswith("flask") else serve_asgi(app)
    with server as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/w?token=hunter2", content=b"x", headers={"X-Request-Id": "req-fwd-1"})
        assert response.status_code == 503
    line = only(json_lines(), "forward_not_sent")
    assert line["levelname"] == "WARNING"
    assert line["litefs_route_target"] == PRIMARY
    assert line["litefs_route_method"] == "POST"
    assert line["litefs_route_path"] == "/w"
    assert line["litefs_route_request_id"] == "req-fwd-1"
    assert "hunter2" not in json.dumps(json_lines())
    assert secret not in json.dumps(json_lines())
