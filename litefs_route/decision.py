"""The routing decision: given a request and the node's state, what happens.

This module is pure (no I/O, no clock, no framework) so that the WSGI and
ASGI adapters, which both call :func:`decide`, can never disagree, and so
that every rule is tested in one table (``tests/test_decision.py``).

Rules, in order:

1. A ``passthrough`` path runs locally, whatever the method.
2. GET, HEAD, OPTIONS and TRACE are reads and run locally, unless a GET or
   HEAD path matches ``write_on_read``. Every other method is a write
   (methods are case-sensitive: ``get`` is not ``GET``).
3. A write runs locally on the primary (and standalone).
4. On a node that knows no primary, a write first waits for one
   (``WAIT_FOR_PRIMARY``); after the wait, 503.
5. On a replica, a write is replayed to the primary, unless the request has
   already been replayed ``max_replays`` times by litefs-route (503: the
   nodes disagree about who is primary), or its body is larger than Fly's
   proxy can replay (413). A body of unknown length is measured first
   (``MEASURE_BODY``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .consistency import parse_txid_cookie
from .mount import NodeState, Role

__all__ = [
    "NO_PRIMARY_REASON",
    "READ_METHODS",
    "SETTLE",
    "Decision",
    "Kind",
    "PathGlobs",
    "RequestInfo",
    "Rules",
    "decide",
    "decide_lagging_read",
    "replay_hops",
    "replay_state",
]

#: Methods that run on a replica. LiteFS's own proxy replays OPTIONS too;
#: we keep it local so that CORS preflights are answered where they land.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_WRITE_ON_READ_METHODS = frozenset({"GET", "HEAD"})

# The replay counter travels in fly-replay's `state` field, which Fly's proxy
# hands back in the replayed request's fly-replay-src header.
_STATE_PREFIX = "litefs-route-hop-"
_REPLAY_SRC_STATE = re.compile(r"(?:^|;)\s*state=" + re.escape(_STATE_PREFIX) + r"([0-9]{1,3})\s*(?:;|$)")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
# A fly-replay-src longer than this is not Fly's; we do not scan it.
_REPLAY_SRC_LIMIT = 1024


class PathGlobs:
    """LiteFS-style path globs: ``*`` matches anything, ``/`` included.

    Anchored at both ends and matched against the decoded path without the
    query string, as LiteFS's ``passthrough``/``always-forward`` are.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        for pattern in self.patterns:
            if not isinstance(pattern, str) or not pattern.startswith(("/", "*")):
                raise ValueError(f"path glob must be a string starting with '/' or '*': {pattern!r}")
        alternatives = (
            "".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", p)) for p in self.patterns
        )
        self._regex = re.compile("|".join(f"(?:{a})" for a in alternatives), re.DOTALL) if self.patterns else None

    def match(self, path: str) -> bool:
        return self._regex is not None and self._regex.fullmatch(path) is not None

    def __repr__(self) -> str:
        return f"PathGlobs({list(self.patterns)!r})"


@dataclass(frozen=True, slots=True)
class Rules:
    """The configuration the decision depends on."""

    write_on_read: PathGlobs
    passthrough: PathGlobs
    #: Replays of one request (counted in fly-replay `state`) before 503.
    max_replays: int = 3
    #: Largest body Fly's proxy replays (1 MB); larger writes get 413.
    replay_body_limit: int = 1_000_000


# RequestInfo and Decision are built on every request: plain slotted classes,
# not frozen ones (a frozen dataclass's __init__ costs ~0.5 µs more). Treat
# them as values all the same: nothing in litefs-route mutates one.
@dataclass(slots=True)
class RequestInfo:
    """What the decision needs to know about a request."""

    method: str
    #: Decoded path, no query string (what the app routes on).
    path: str
    #: The raw ``fly-replay-src`` header, None when absent.
    replay_src: str | None = None
    #: ``Content-Length`` as sent, None when absent or malformed.
    content_length: int | None = None
    #: True when the body's length is unknown (``Transfer-Encoding: chunked``).
    unknown_length: bool = False
    #: The read-your-writes TXID from the ``__txid`` cookie, None if none.
    txid: int | None = None

    @classmethod
    def from_headers(
        cls,
        method: str,
        path: str,
        *,
        replay_src: str | None,
        content_length: str | None,
        transfer_encoding: str | None,
        cookie: str | None = None,
    ) -> RequestInfo:
        """Build from raw header values; anything malformed counts as absent."""
        if not (content_length or transfer_encoding or cookie):
            return cls(method, path, replay_src)  # most reads: nothing to parse
        length = int(content_length) if content_length and _CONTENT_LENGTH.fullmatch(content_length) else None
        chunked = transfer_encoding is not None and "chunked" in transfer_encoding.lower()
        return cls(method, path, replay_src, length, chunked and length is None, parse_txid_cookie(cookie))


class Kind(enum.Enum):
    RUN = "run"  # call the app here
    REPLAY = "replay"  # answer with fly-replay: instance=<target>
    UNAVAILABLE = "unavailable"  # 503 + Retry-After
    TOO_LARGE = "too-large"  # 413: Fly cannot replay this body
    TIMEOUT = "timeout"  # 408: a chunked body did not arrive in time to be measured
    WAIT_FOR_PRIMARY = "wait-for-primary"  # read fresh state until a primary is known
    MEASURE_BODY = "measure-body"  # read up to the replay limit, decide again


@dataclass(slots=True)
class Decision:
    kind: Kind
    #: True if the request was routed as a write (it mutates the database).
    write: bool
    #: The replay target (REPLAY only).
    target: str | None = None
    #: The replay's hop number, carried in fly-replay's `state` (REPLAY only).
    hops: int = 0
    #: Why, in words a user may read (UNAVAILABLE, TOO_LARGE).
    reason: str = ""


_RUN_READ = Decision(Kind.RUN, write=False)
_RUN_WRITE = Decision(Kind.RUN, write=True)

NO_PRIMARY_REASON = "no primary is known right now (a LiteFS election or failover)"
#: What a request must end in when its app ran here but it belongs on the
#: primary and no primary was known (``ensure_primary()``) or the database
#: refused its write: to be decided again on a fresh reading, after waiting
#: for a primary (``Router.settle``).
SETTLE = Decision(Kind.WAIT_FOR_PRIMARY, write=True)


def replay_hops(replay_src: str | None) -> int:
    """How many times litefs-route already replayed this request (0 if none)."""
    if not replay_src or len(replay_src) > _REPLAY_SRC_LIMIT:
        return 0
    match = _REPLAY_SRC_STATE.search(replay_src)
    return int(match[1]) if match else 0


def replay_state(hops: int) -> str:
    """The fly-replay `state` value for a replay that is hop number *hops*."""
    return f"{_STATE_PREFIX}{hops}"


def is_write(request: RequestInfo, rules: Rules) -> bool:
    """True if the request must run on the primary (rules 1 and 2)."""
    if request.method not in READ_METHODS:
        return True
    return request.method in _WRITE_ON_READ_METHODS and rules.write_on_read.match(request.path)


def decide_lagging_read(request: RequestInfo, state: NodeState, rules: Rules) -> Decision:
    """A read whose TXID cookie the replica did not reach in time.

    Replayed to the primary, which has the data, within the replay limit;
    past it (or with no primary known) it runs here rather than fail.
    """
    hops = replay_hops(request.replay_src)
    if state.role is not Role.REPLICA or state.primary_id is None or hops >= rules.max_replays:
        return _RUN_READ
    return Decision(Kind.REPLAY, False, target=state.primary_id, hops=hops + 1)


def decide(
    request: RequestInfo,
    state: NodeState,
    rules: Rules,
    *,
    waited_for_primary: bool = False,
    body_size: int | None = None,
    force_write: bool = False,
) -> Decision:
    """Decide what happens to *request* on a node in *state*.

    *waited_for_primary*: the caller already waited for a primary to be known.
    *body_size*: the measured body size, after ``MEASURE_BODY``.
    *force_write*: the handler called ``ensure_primary()``; passthrough and
    method no longer matter, and the body is not measured again (it may have
    been read by the app).
    """
    # Reads first: most requests are, and then passthrough cannot matter
    # (both run here), so its globs are matched against writes only.
    if not force_write and (not is_write(request, rules) or rules.passthrough.match(request.path)):
        return _RUN_READ
    if state.is_primary:
        return _RUN_WRITE
    if state.role is Role.NO_PRIMARY or state.primary_id is None:
        if waited_for_primary:
            return Decision(Kind.UNAVAILABLE, True, reason=NO_PRIMARY_REASON)
        return Decision(Kind.WAIT_FOR_PRIMARY, True)
    hops = replay_hops(request.replay_src)
    if hops >= rules.max_replays:
        return Decision(
            Kind.UNAVAILABLE,
            True,
            reason=f"replayed {hops} times without reaching the primary (the instances disagree on the primary)",
        )
    limit = rules.replay_body_limit
    size = request.content_length if request.content_length is not None else body_size
    if size is not None and size > limit:
        return Decision(Kind.TOO_LARGE, True, target=state.primary_id, reason=f"the body is larger than {limit} bytes")
    if size is None and request.unknown_length and not force_write:
        return Decision(Kind.MEASURE_BODY, True)
    return Decision(Kind.REPLAY, True, target=state.primary_id, hops=hops + 1)
