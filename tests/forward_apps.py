"""Apps for the forward-mode tests: one that streams an upload through a hash, behind each middleware.

Configured from the environment: ``LITEFS_DIR``, ``FLY_MACHINE_ID``,
``LITEFS_ROUTE_FORWARD_SECRET`` (read by the middleware itself), and
``FORWARD`` / ``FORWARD_URL`` (its options). ``POST /upload`` answers what it
saw: the body's size and SHA-256 (read in chunks, never whole), the
instance, the client-address headers, whether the forward secret reached it.
With ``STARTED_FILE`` set it creates that file once it has read a first
chunk (the tests kill the primary then); with ``BUMP_POS`` it advances the
database's TXID, as a commit would.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import MutableMapping
from typing import Any

from litefs_route import asgi, wsgi
from litefs_route._mount import read_position
from litefs_route_devcluster.files import write_position

INSTANCE = os.environ.get("FLY_MACHINE_ID", "standalone")
OPTIONS: dict[str, Any] = {
    "litefs_api_url": "off",
    "forward": os.environ.get("FORWARD", "off"),
    "forward_url": os.environ.get("FORWARD_URL", "http://127.0.0.1:1"),
    "database": os.environ.get("DATABASE_FILENAME") or None,
}


def _seen(size: int, digest: str, headers: dict[str, str]) -> bytes:
    return json.dumps(
        {
            "instance": INSTANCE,
            "size": size,
            "sha256": digest,
            "x_forwarded_for": headers.get("x-forwarded-for"),
            "forwarded": headers.get("forwarded"),
            "host": headers.get("host"),
            "secret_reached_app": "x-litefs-route-forward" in headers,
        }
    ).encode()


def _started() -> None:
    marker = os.environ.get("STARTED_FILE")
    if marker:
        with open(marker, "w") as f:
            f.write(INSTANCE)


def _bump_pos() -> None:
    if os.environ.get("BUMP_POS"):
        mount, database = os.environ["LITEFS_DIR"], os.environ["DATABASE_FILENAME"]
        position = read_position(mount, database)
        write_position(mount, database, (position.txid if position else 0) + 1, 0)


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    headers = {k[5:].replace("_", "-").lower(): str(v) for k, v in environ.items() if k.startswith("HTTP_")}
    headers["host"] = environ.get("HTTP_HOST", "")
    digest, size = hashlib.sha256(), 0
    stream = environ["wsgi.input"]
    while chunk := stream.read(65536):
        if size == 0:
            _started()
        size += len(chunk)
        digest.update(chunk)
    _bump_pos()
    body = _seen(size, digest.hexdigest(), headers)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


async def _asgi_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in scope["headers"]}
    digest, size, more = hashlib.sha256(), 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        if size == 0 and chunk:
            _started()
        size += len(chunk)
        digest.update(chunk)
        more = message.get("more_body", False)
    _bump_pos()
    body = _seen(size, digest.hexdigest(), headers)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


wsgi_app = wsgi.PrimaryRoutingMiddleware(_wsgi_app, **OPTIONS)
asgi_app = asgi.PrimaryRoutingMiddleware(_asgi_app, **OPTIONS)
