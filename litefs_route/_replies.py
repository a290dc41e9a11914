"""What the middleware writes itself: its replies and the tag headers.

Pure and framework-free; both adapters render through these functions and
the :class:`~litefs_route._routing.NodeRouting` memoises their results.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import AnyStr, Generic, TypeVar

from ._mount import NodeState
from ._request import replay_state
from ._verdicts import Decision, Kind

__all__ = [
    "INSTANCE_HEADER",
    "LENGTH_REQUIRED",
    "OUR_TAGS",
    "OUR_TAGS_BYTES",
    "OUTCOME_HEADER",
    "PRIMARY_HEADER",
    "PRIMARY_REGION_HEADER",
    "REPLAY_HEADER",
    "STAND_IN",
    "Headers",
    "Reply",
    "TagNames",
    "build_reply",
    "build_tags",
    "fly_duration",
    "forward_failure_reply",
    "has_replay_header",
]

# Our own headers: tagged on every response, and dropped from the app's
# response first so that a stale copy set by the app cannot survive.
PRIMARY_HEADER = "Fly-Primary-Instance"
#: Instead of PRIMARY_HEADER where a source routes by region (Postgres): the primary's region.
PRIMARY_REGION_HEADER = "Fly-Primary-Region"
INSTANCE_HEADER = "Fly-Instance"
REPLAY_HEADER = "fly-replay"
#: On a 502: the write may have run; the client must check before sending it again.
OUTCOME_HEADER = "Litefs-Route-Outcome"
_OUTCOME_UNKNOWN = (OUTCOME_HEADER, "unknown")
_OUR_TAG_NAMES = frozenset({PRIMARY_HEADER.lower(), PRIMARY_REGION_HEADER.lower(), INSTANCE_HEADER.lower()})
_REPLAY_NAMES: frozenset[str | bytes] = frozenset({REPLAY_HEADER, REPLAY_HEADER.encode()})

Headers = tuple[tuple[str, str], ...]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Reply:
    """A response the middleware makes itself (replay, 503, 413, 408)."""

    status: int
    headers: Headers
    body: bytes

    @property
    def status_line(self) -> str:
        return f"{self.status} {_REASONS[self.status]}"


def build_tags(state: NodeState) -> Headers:
    """The headers every response carries: who is primary, who answered."""
    if state.primary_id is None:
        return ((INSTANCE_HEADER, state.instance_id),)
    primary = PRIMARY_REGION_HEADER if state.primary_is_region else PRIMARY_HEADER
    return ((primary, state.primary_id), (INSTANCE_HEADER, state.instance_id))


# Header names an app answered with that are none of ours, as spelled: at most this many remembered.
_OTHER_NAMES_KEPT = 256


_Name = TypeVar("_Name", bound=str | bytes)


class TagNames(Generic[_Name]):
    """Our tag names in one spelling (str for WSGI, bytes for ASGI), and how a response gets the tags."""

    __slots__ = ("_others", "lower")

    def __init__(self, lower: frozenset[_Name]) -> None:
        #: The names, lower case.
        self.lower: frozenset[_Name] = lower
        # Names seen on apps' responses that are not ours, exactly as spelled: an app answers
        # with the same few names on every response, so most need no lower-casing at all.
        self._others: set[_Name] = set()

    def tag(
        self, headers: Iterable[tuple[_Name, _Name]], tags: Iterable[tuple[_Name, _Name]]
    ) -> list[tuple[_Name, _Name]]:
        """*headers* without any copy of our tags (a stale one the app set cannot survive), then *tags*."""
        if type(headers) is not list:
            headers = list(headers)  # ASGI allows a one-shot iterable: it is read twice
        others = self._others
        for name, _ in headers:
            if name not in others:
                if name.lower() in self.lower:  # rare: without the app's copies
                    kept: list[tuple[_Name, _Name]] = [h for h in headers if h[0].lower() not in self.lower]
                    return [*kept, *tags]
                if len(others) < _OTHER_NAMES_KEPT:  # names are the app's choice: bounded all the same
                    others.add(name)
        tagged: list[tuple[_Name, _Name]] = [*headers, *tags]  # one list built in one step
        return tagged


#: Our tag names as WSGI (str) and ASGI (bytes) headers spell them.
OUR_TAGS: TagNames[str] = TagNames(_OUR_TAG_NAMES)
OUR_TAGS_BYTES: TagNames[bytes] = TagNames(frozenset(name.encode() for name in _OUR_TAG_NAMES))


def build_reply(decision: Decision, retry_after: int, replay_timeout: float | None = None) -> Reply:
    """The response for a decision that does not run the app.

    *replay_timeout*: seconds Fly's proxy tries to reach a replay's target
    before it sends the request back here with ``fly-replay-failed``
    (``fallback=force_self``); None: Fly's own default, and no fallback.
    """
    if decision.kind in (Kind.REPLAY, Kind.TOO_LARGE) and decision.target is None:
        raise ValueError(f"a {decision.kind.value} decision needs a target")
    where = f"in region {decision.target}" if decision.by_region else f"on instance {decision.target}"
    if decision.kind is Kind.REPLAY:
        body = (
            f"This request must run {where}.\n"
            "Fly's proxy replays it there when it sees the fly-replay header; if you are\n"
            "reading this, nothing did (local development or private-network traffic).\n"
        )
        field = "region" if decision.by_region else "instance"
        fields = f"{field}={decision.target};state={replay_state(decision.hops)}"
        if replay_timeout is not None:
            fields += f";timeout={fly_duration(replay_timeout)};fallback=force_self"
        return _text_reply(409, body, [(REPLAY_HEADER, fields)])
    if decision.kind is Kind.TOO_LARGE:
        header = "fly-prefer-region" if decision.by_region else "fly-force-instance-id"
        body = (
            f"This request must run {where}, but {decision.reason}\n"
            "and Fly's proxy cannot replay it there. Send it there directly\n"
            f"(header {header}: {decision.target}) or make it smaller.\n"
        )
        return _text_reply(413, body, [])
    if decision.kind is Kind.TIMEOUT:
        body = f"This write must run on the primary, but {decision.reason}. Send it again.\n"
        return _text_reply(408, body, [])
    if decision.kind is Kind.HEALTHY:
        return _text_reply(200, "OK\n", [("Cache-Control", "no-store")])
    if decision.kind is Kind.UNHEALTHY:
        return _text_reply(503, f"Replication lag exceeded: {decision.reason}\n", [("Cache-Control", "no-store")])
    if decision.kind is Kind.BAD_REQUEST:
        return _text_reply(400, f"This request was refused: {decision.reason}.\n", [])
    if decision.kind is Kind.FORBIDDEN:
        return _text_reply(403, f"This request was refused: {decision.reason}.\n", [])
    if decision.kind is Kind.UNAVAILABLE:
        body = f"This request cannot run now: {decision.reason}. Retry shortly.\n"
        return _text_reply(503, body, [("Retry-After", str(retry_after))])
    if decision.kind is Kind.OUTCOME_UNKNOWN:
        body = (
            f"The outcome of this write is unknown: {decision.reason}.\nCheck whether it ran before sending it again.\n"
        )
        return _text_reply(502, body, [_OUTCOME_UNKNOWN])
    raise ValueError(f"no reply for {decision.kind}: the app runs, or the adapter forwards the request")


def _length_required() -> Reply:
    body = (
        "This write has a body of unknown length (chunked), and this server does not mark where it ends,\n"
        "so it cannot be forwarded to the primary. Send it with a Content-Length.\n"
    )
    return _text_reply(411, body, [])


def forward_failure_reply(target: str, sent: bool, detail: str, retry_after: int) -> Reply:
    """The answer when forwarding a write to *target* failed: whether it may have run, in words and status."""
    if not sent:  # nothing left this instance: safe to send again
        body = f"This write was not sent to the primary ({target}: {detail}); it did not run. Retry shortly.\n"
        return _text_reply(503, body, [("Retry-After", str(retry_after))])
    body = (
        f"The connection to the primary ({target}) failed after this write was sent ({detail}):\n"
        "it may have run. Check before sending it again.\n"
    )
    return _text_reply(502, body, [_OUTCOME_UNKNOWN])


def fly_duration(seconds: float) -> str:
    """*seconds* as Fly's duration strings spell it: ``5s``, ``800ms``."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _text_reply(status: int, body: str, extra: list[tuple[str, str]]) -> Reply:
    # No Cache-Control: 409, 413 and 503 are not cacheable without explicit
    # freshness (RFC 9111 4.2.2), and every header costs the server real work
    # (h11 validates each one: ~16k instructions, measured in bench/).
    data = body.encode()
    headers = [*extra, ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    return Reply(status, tuple(headers), data)


def has_replay_header(headers: Iterable[tuple[AnyStr, AnyStr]]) -> bool:
    """True if *headers* include ``fly-replay`` (the app's own replay counts)."""
    return any(name.lower() in _REPLAY_NAMES for name, _ in headers)


#: The answer to a chunked write this WSGI server cannot forward (it does not mark the body's end).
LENGTH_REQUIRED = _length_required()

#: The app's answer while the middleware has still to settle how the request
#: ends (no primary known yet, or the database refused its write): the middleware
#: replaces it. No fly-replay, so never taken for the replay; not a 5xx, so
#: error trackers (Sentry reports 5xx HTTP exceptions) see no error in it.
STAND_IN = _text_reply(409, "This request ends in the routing middleware's own answer.\n", [])
