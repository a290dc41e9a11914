"""Run one instance of a WSGI or ASGI app (the dev cluster starts this in a subprocess).

``python -m litefs_route_devcluster._serve module:attr --port 8001``

ASGI apps run under uvicorn; WSGI apps under Werkzeug's development server
(threaded), or wsgiref with a thread per request when Werkzeug is absent, or
gunicorn with ``--server gunicorn`` (its options from ``$GUNICORN_CMD_ARGS``).
``--interface auto`` tells them apart: an ASGI app is a coroutine function or
has an ``async def __call__``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import logging
import os
import socketserver
import sys
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

__all__ = ["is_asgi", "load_app", "main"]


def load_app(spec: str) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"APP must look like module:attribute, got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def is_asgi(app: Any) -> bool:
    """True for an ASGI application (``async def app(scope, receive, send)`` or an async ``__call__``)."""
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 (we want the method, not callable())
    return call is not None and inspect.iscoroutinefunction(call)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve_wsgi(app: Any, host: str, port: int, server: str) -> None:
    if server in ("auto", "werkzeug"):
        try:
            from werkzeug.serving import run_simple
        except ImportError:
            if server == "werkzeug":
                raise
        else:
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
            run_simple(host, port, app, threaded=True, use_reloader=False, use_debugger=False)
            return
    with make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler) as httpd:
        httpd.serve_forever()


def _exec_gunicorn(spec: str, host: str, port: int) -> None:
    # exec, not a child: the instance's process (and group) is gunicorn's master,
    # so stopping or killing the instance reaches its workers too.
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", spec]
    os.execv(sys.executable, argv)  # noqa: S606 (a fixed argv, no shell)


def _serve_asgi(app: Any, host: str, port: int) -> None:
    import uvicorn  # checked in main()

    uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="auto", timeout_graceful_shutdown=3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litefs_route_devcluster._serve")
    parser.add_argument("app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", choices=["auto", "asgi", "wsgi"], default="auto")
    parser.add_argument("--server", choices=["auto", "werkzeug", "wsgiref", "gunicorn"], default="auto")
    args = parser.parse_args(argv)
    if args.server == "gunicorn":
        if args.interface == "asgi":
            parser.error("--server gunicorn serves WSGI apps")
        if importlib.util.find_spec("gunicorn") is None:
            print("--server gunicorn needs gunicorn: pip install gunicorn", file=sys.stderr, flush=True)
            return 3
        print(f"serving {args.app} (gunicorn) on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
        _exec_gunicorn(args.app, args.host, args.port)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app = load_app(args.app)
    except (ImportError, AttributeError, ValueError) as exc:
        # One line (the dev command shows the last line of this log): what is missing.
        print(f"cannot load the app {args.app}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 3
    interface = args.interface
    if interface == "auto":
        interface = "asgi" if is_asgi(app) else "wsgi"
    print(f"serving {args.app} ({interface}) on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    if interface == "asgi":
        _serve_asgi(app, args.host, args.port)
    else:
        _serve_wsgi(app, args.host, args.port, args.server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
