"""A threaded HTTP server in the background that can be closed for good: the dev cluster's servers share it.

:class:`ServerThread` runs a :class:`ThreadingHTTPServer` in a daemon thread
and, on :meth:`~ServerThread.close`, stops accepting and drops every open
client connection too (a plain ``shutdown()`` leaves keep-alive connections
served by their threads), so a test's clean-up leaves no port in use.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .ports import release_port, reserve_port

__all__ = ["ServerThread", "TrackingHTTPServer"]

logger = logging.getLogger("litefs_route_devcluster")


class TrackingHTTPServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` that knows its open connections; ``owner`` is what its handlers serve."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: Any) -> None:
        super().__init__(address, handler)
        self.owner = owner
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-request: not worth a traceback on stderr.
        logger.debug("connection from %s failed", client_address, exc_info=True)

    def drop_connections(self) -> None:
        with self._lock:
            connections = list(self._open)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class ServerThread:
    """Serves *handler* for *owner* on *host*:*port* (0: a free one, kept across :meth:`close`/:meth:`start`)."""

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        owner: Any,
        host: str,
        port: int,
        name: str,
        server_class: type[TrackingHTTPServer] = TrackingHTTPServer,
    ) -> None:
        self.handler = handler
        self.server_class = server_class
        self.owner = owner
        self.host = host
        self.port = port
        self.name = name
        self.server: TrackingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if not port:
            # Not port 0 at the first start: the port is bound again after a close() (an outage), and
            # a port the kernel handed out is anyone's meanwhile. Reserved until this object is gone.
            self.port = reserve_port(host)
            weakref.finalize(self, release_port, self.port)

    def start(self, poll_interval: float = 0.05) -> None:
        """Listen and serve in a daemon thread (a no-op if already serving)."""
        if self.server is not None:
            return
        self.server = self.server_class((self.host, self.port), self.handler, self.owner)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": poll_interval}, name=self.name, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop listening and drop every client connection. Idempotent."""
        server, self.server = self.server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` it listens on; RuntimeError when not serving."""
        if self.server is None:
            raise RuntimeError(f"{self.name} is not running")
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://host:port``; RuntimeError when not serving."""
        host, port = self.address
        return f"http://{host}:{port}"
