"""Small real apps behind the middleware, one per framework, with the same routes.

Every handler appends to ``calls`` so tests can assert whether the app ran.
The outer shims record whether anything read the request body.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from litefs_route import ensure_instance, ensure_primary, get_instance_info

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from litefs_route.asgi import ASGIApp, Receive, Scope, Send


class Gate:
    """Lets a test release a streaming response one chunk at a time."""

    def __init__(self, chunks: int = 3) -> None:
        self.events = [threading.Event() for _ in range(chunks)]

    def release(self, i: int) -> None:
        self.events[i].set()


def flask_app(calls: list[str], gate: Gate | None = None, **config: Any) -> Any:
    from flask import Flask, Response, jsonify, request, stream_with_context

    app = Flask("litefs_test", static_folder=None)
    app.config.update(config)

    @app.route("/", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"])
    def index() -> str:
        calls.append(f"{request.method} /")
        request.get_data()
        return "ran"

    @app.route("/static/<path:rest>", methods=["GET", "POST", "DELETE"])
    def static(rest: str) -> str:
        calls.append(f"{request.method} /static/{rest}")
        return "static"

    @app.route("/auth/callback/<name>")
    def callback(name: str) -> str:
        calls.append(f"GET /auth/callback/{name}")
        return "callback"

    @app.route("/ensure", methods=["GET", "POST"])
    def ensure() -> str:
        ensure_primary()
        calls.append("ensure")
        return "wrote"

    @app.route("/instance/<name>", methods=["GET", "POST"])
    def instance(name: str) -> str:
        try:
            ensure_instance(name)
        except Exception:
            calls.append(f"swallowed {name}")  # swallowed: the middleware still ends it in the replay
            return "swallowed"
        calls.append(f"on {name}")
        return "here"

    @app.route("/ensure-swallow")
    def ensure_swallow() -> str:
        try:
            ensure_primary()
        except Exception:
            calls.append("swallowed")
            return "swallowed"
        return "wrote"

    @app.route("/info")
    def info() -> Response:
        i = get_instance_info()
        return jsonify(current=i.current_instance, primary=i.primary_instance, is_primary=i.is_primary, region=i.region)

    @app.route("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[bytes]:
            assert gate is not None
            for i, event in enumerate(gate.events):
                event.wait(10)
                yield f"chunk{i};".encode()

        return Response(stream_with_context(chunks()), mimetype="text/plain")

    return app


def starlette_app(calls: list[str], gate: Gate | None = None, *, lifespan: Any = None) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    async def index(request: Request) -> Response:
        calls.append(f"{request.method} /")
        await request.body()
        return PlainTextResponse("ran")

    async def static(request: Request) -> Response:
        calls.append(f"{request.method} {request.url.path}")
        return PlainTextResponse("static")

    async def callback(request: Request) -> Response:
        calls.append(f"GET {request.url.path}")
        return PlainTextResponse("callback")

    async def ensure(request: Request) -> Response:
        ensure_primary()
        calls.append("ensure")
        return PlainTextResponse("wrote")

    def ensure_sync(request: Request) -> Response:  # runs in a worker thread
        ensure_primary()
        calls.append("ensure")
        return PlainTextResponse("wrote")

    async def instance(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            ensure_instance(name)
        except Exception:
            calls.append(f"swallowed {name}")  # swallowed: the middleware still ends it in the replay
            return PlainTextResponse("swallowed")
        calls.append(f"on {name}")
        return PlainTextResponse("here")

    async def ensure_swallow(request: Request) -> Response:
        try:
            ensure_primary()
        except Exception:
            calls.append("swallowed")
            return PlainTextResponse("swallowed")
        return PlainTextResponse("wrote")

    async def info(request: Request) -> Response:
        i = get_instance_info()
        return JSONResponse(
            {
                "current": i.current_instance,
                "primary": i.primary_instance,
                "is_primary": i.is_primary,
                "region": i.region,
            }
        )

    async def stream(request: Request) -> Response:
        import anyio.to_thread

        async def chunks() -> Any:
            assert gate is not None
            for i, event in enumerate(gate.events):
                await anyio.to_thread.run_sync(event.wait, 10)
                yield f"chunk{i};".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(f"echo:{text}")
        await websocket.close()

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"]
    routes = [
        Route("/", index, methods=methods),
        Route("/static/{rest:path}", static, methods=["GET", "POST", "DELETE"]),
        Route("/auth/callback/{name}", callback),
        Route("/ensure", ensure, methods=["GET", "POST"]),
        Route("/ensure-sync", ensure_sync),
        Route("/ensure-swallow", ensure_swallow),
        Route("/instance/{name}", instance, methods=["GET", "POST"]),
        Route("/info", info),
        Route("/stream", stream),
        WebSocketRoute("/ws", ws),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class BodyReadRecorder:
    """Outermost WSGI/ASGI shim: records whether anything read the body."""

    def __init__(self) -> None:
        self.reads = 0

    def wsgi(self, app: WSGIApplication) -> WSGIApplication:
        recorder = self

        class Input:
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def read(self, *args: Any) -> bytes:
                recorder.reads += 1
                data: bytes = self.inner.read(*args)
                return data

            def readline(self, *args: Any) -> bytes:
                recorder.reads += 1
                data: bytes = self.inner.readline(*args)
                return data

        def shim(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            environ["wsgi.input"] = Input(environ["wsgi.input"])
            return app(environ, start_response)

        return shim

    def asgi(self, app: ASGIApp) -> ASGIApp:
        async def shim(scope: Scope, receive: Receive, send: Send) -> None:
            async def counting_receive() -> Any:
                self.reads += 1
                return await receive()

            await app(scope, counting_receive if scope["type"] == "http" else receive, send)

        return shim
