"""WebSockets that write (``write_sockets``): held by the primary, answered with the replay on a replica.

Fly replays a WebSocket handshake like any request; the replaying instance
must not accept the socket itself. Served by uvicorn, whose
``websocket.http.response`` extension lets the middleware answer the
handshake with the 409 + ``fly-replay``.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from litefs_route import asgi
from litefs_route.asgi import SOCKET_REFUSED_CLOSE_CODE
from tests.apps import starlette_app
from tests.support import Mount, serve_asgi

ME = "e784079b449483"
PRIMARY = "3d8d9e5b711e68"


def _middleware(mount: Mount, **options: Any) -> asgi.PrimaryRoutingMiddleware:
    return asgi.PrimaryRoutingMiddleware(
        starlette_app([]), litefs_dir=str(mount.path), instance_id=ME, litefs_api_url="off", **options
    )


def _ws(url: str) -> str:
    return url.replace("http://", "ws://") + "/ws"


@pytest.mark.parametrize(
    ("role", "write_sockets", "expected"),
    [
        pytest.param("replica", ["/ws"], 409, id="replica-write-socket-is-replayed"),
        pytest.param("replica", ["/other/*"], None, id="replica-other-socket-untouched"),
        pytest.param("primary", ["/ws"], None, id="primary-holds-the-write-socket"),
        pytest.param("no-primary", ["/ws"], 503, id="no-primary-refused-after-the-wait"),
        pytest.param("replica-forwarding", ["/ws"], 409, id="forward-mode-still-replays-a-socket"),
    ],
)
def test_write_sockets(mount: Mount, role: str, write_sockets: list[str], expected: int | None) -> None:
    if role == "primary":
        mount.make_primary()
    elif role == "no-primary":
        mount.make_no_primary()
    else:
        mount.make_replica(PRIMARY)
    forwarding: dict[str, Any] = {}
    if role == "replica-forwarding":
        forwarding = {"forward": "always", "forward_secret": "s" * 16, "forward_url": "http://127.0.0.1:1"}
    app = _middleware(mount, write_sockets=write_sockets, primary_wait=0.2, **forwarding)
    with serve_asgi(app) as url:
        if expected is None:
            with connect(_ws(url)) as ws:
                ws.send("hi")
                assert ws.recv() == "echo:hi"
            return
        with pytest.raises(InvalidStatus) as refused:
            connect(_ws(url))
    response = refused.value.response
    assert response.status_code == expected
    assert response.headers["fly-instance"] == ME
    if expected == 409:
        assert (
            response.headers["fly-replay"]
            == f"instance={PRIMARY};state=litefs-route-hop-1;timeout=5s;fallback=force_self"
        )
        assert response.headers["fly-primary-instance"] == PRIMARY
        assert app.routing.counters.snapshot()["replays"] == 1
    else:
        assert response.headers["retry-after"] == "2"


def test_a_server_without_the_http_response_extension_closes_the_socket(
    mount: Mount, caplog: pytest.LogCaptureFixture
) -> None:
    """The ASGI contract without ``websocket.http.response``: never accepted, closed with 1013, logged."""
    import asyncio

    mount.make_replica(PRIMARY)
    called: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    middleware = asgi.PrimaryRoutingMiddleware(
        app, litefs_dir=str(mount.path), instance_id=ME, litefs_api_url="off", write_sockets=["/ws"]
    )
    scope = {"type": "websocket", "path": "/ws", "headers": [], "extensions": {}}
    incoming = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    with caplog.at_level(logging.WARNING, logger="litefs_route"):
        asyncio.run(middleware(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": SOCKET_REFUSED_CLOSE_CODE}]
    assert called == []
    assert "refused the WebSocket /ws with close code 1013" in caplog.text
