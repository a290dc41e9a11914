"""The lease call: move LiteFS's lease to this node through its HTTP API."""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

from .._mount import default_instance_id, read_node_state
from .waits import WaitTimeout, wait_for_primary

__all__ = ["promote"]


def promote(
    litefs_dir: str, api_url: str, timeout: float, *, instance_id: str | None = None, retry_every: float = 0.5
) -> None:
    """Move the lease to this node: LiteFS's ``POST /promote`` (what ``litefs run -promote`` asks), until it holds it.

    LiteFS answers an error while no primary is connected or a handoff
    fails; it is asked again every *retry_every* seconds. Raises
    :class:`~litefs_route.WaitTimeout` (with LiteFS's last answer) after
    *timeout* seconds; returns at once on the primary.
    """
    instance = instance_id or default_instance_id()
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if read_node_state(litefs_dir, instance).is_primary:
            return
        try:
            last = _post(api_url, "/promote", min(10.0, max(0.1, deadline - time.monotonic())))
        except OSError as exc:
            last = f"cannot reach LiteFS at {api_url}: {exc}"
        if not last:  # accepted: the handoff is under way
            try:
                wait_for_primary(
                    litefs_dir, max(0.0, deadline - time.monotonic()), this_node=True, instance_id=instance
                )
                return
            except WaitTimeout as exc:
                last = str(exc)
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"not promoted after {timeout:g} s: {last}", last)
        time.sleep(retry_every)


def _post(api_url: str, path: str, timeout: float) -> str:
    """POST *path*: "" on 2xx, else LiteFS's error text."""
    parts = urlsplit(api_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 20202, timeout=timeout)
    try:
        conn.request("POST", path)
        response = conn.getresponse()
        body = response.read(4096).decode(errors="replace").strip()
        return "" if 200 <= response.status < 300 else f"LiteFS answered {response.status}: {body}"
    except http.client.HTTPException as exc:
        return f"LiteFS's answer is not HTTP: {exc!r}"
    finally:
        conn.close()
