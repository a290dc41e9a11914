"""The options the routing rules depend on, validated by the middleware that builds them."""

from __future__ import annotations

from dataclasses import dataclass

from ._globs import NO_GLOBS, PathGlobs
from ._secret import Secret

__all__ = ["Rules"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """The options the rules depend on (validated by the middleware that builds them)."""

    write_on_read: PathGlobs
    passthrough: PathGlobs
    #: Replays of one request (counted in fly-replay `state`) before 503.
    max_replays: int
    #: Largest body Fly's proxy replays; larger writes get 413.
    replay_body_limit: int
    #: Seconds a write waits for a primary when none is known.
    primary_wait: float
    #: Seconds a replica spends measuring a body of unknown length.
    body_timeout: float
    #: True when read-your-writes is on (a mount and a database are configured).
    read_your_writes: bool
    #: Seconds a replica read waits for its TXID cookie.
    consistency_wait: float
    #: The health check's path (GET), None when off.
    health_path: str | None = None
    #: The replication lag, in seconds, above which the health check fails (0: never).
    max_lag: float = 10.0
    #: WebSocket paths whose handlers write: their handshake is routed as a write.
    write_sockets: PathGlobs = NO_GLOBS
    #: Forward mode: "off", "oversize" (the writes Fly cannot replay), "always" (every write).
    forward: str = "off"
    #: The secret a forwarded request must carry; None: no forwarded request is run here.
    forward_secret: Secret | None = None
