"""A stand-in for HashiCorp Consul that serves only what LiteFS's Consul leaser calls.

**This is a test tool, not Consul.** Consul itself cannot be installed here
(its licence), yet tests need real LiteFS nodes with ``lease.type: consul`` so
that the primary can move. :class:`ConsulStandIn` answers the HTTP calls that
LiteFS v0.5.14's leaser (``consul/consul.go``) makes through the Go client
``github.com/hashicorp/consul/api`` v1.11.0, with the wire format of that
client and the semantics of Consul's own state store, and nothing else.

What it implements:

=========================================  ===========================================================
``PUT /v1/catalog/register``               records ``Node`` (``Node`` and ``Address`` required); ``true``
``PUT /v1/session/create``                 ``Name``, ``Node``, ``Behavior``, ``TTL``, ``LockDelay``;
                                           answers ``{"ID": "<uuid>"}``
``PUT /v1/session/renew/<id>``             ``[<session entry>]``, or 404 for an unknown session
``PUT /v1/session/destroy/<id>``           invalidates the session; ``true`` (also for an unknown one)
``GET /v1/kv/<key>``                       ``[{"LockIndex", "Key", "Flags", "Value", "Session",
                                           "CreateIndex", "ModifyIndex"}]`` (``Value`` base64,
                                           ``null`` when empty; ``Session`` only while locked),
                                           or 404 with an empty body; ``X-Consul-Index`` header
``PUT /v1/kv/<key>``                       plain put, ``?acquire=<id>``, ``?release=<id>``, ``?cas=<index>``,
                                           ``?flags=<n>``; answers ``true`` or ``false``
``DELETE /v1/kv/<key>``                    deletes (``?cas=<index>`` honoured); ``true`` or ``false``
=========================================  ===========================================================

``dc``, ``ns``, ``stale``, ``consistent``, ``index``, ``wait`` and any other
query parameter are accepted and ignored; ``?recurse``, ``?keys`` and ``?raw``
(which would change a reply's shape) are refused with 400. Anything else is
404 with a short text body, and logged. JSON field names are matched
case-insensitively, as Go's decoder does.

Semantics, as Consul's state store has them:

- A session with a ``TTL`` is invalidated when it is not renewed within
  **exactly** its TTL (real Consul waits up to twice the TTL). Any positive
  TTL up to 24 h is accepted: real Consul refuses TTLs under 10 s, tests
  want shorter ones. ``TTL`` absent, empty or ``0s``: the session never expires.
- ``LockDelay`` arrives as the Go client sends it, a string such as
  ``"1000ms"`` (``durToMsec``), or as a JSON number of nanoseconds; either way
  a value under 1000 ns means seconds (Consul's ``FixupLockDelay``). Absent:
  15 s. Session entries carry it back as a number of nanoseconds (Go's
  ``time.Duration``). Capped at 60 s when applied, like Consul.
- On invalidation (TTL expiry, destroy, :meth:`ConsulStandIn.expire_session`)
  the keys the session holds are deleted (``Behavior: "delete"``) or released
  (``"release"``, the default), and each of those keys cannot be acquired by
  any session for the session's lock-delay, counted from the moment of
  invalidation. A voluntary ``?release=`` sets no lock-delay.
- ``?acquire=<id>``: ``false`` while the key is under lock-delay or held by
  another session; otherwise the session takes the key and the body becomes
  its value (the holder may acquire again to update it). ``LockIndex``
  increments when an unheld key is acquired, not when the holder re-acquires.
  An unknown or invalidated session is an error, as in Consul: 500 with
  ``invalid session "<id>"``.
- ``?release=<id>``: ``true`` only for the holder. As in Consul, the request
  body replaces the value: the Go client sends none, so a released key has an
  empty value (``"Value": null``), which LiteFS reads as "no primary".
- A plain put keeps a key's holder but, as in Consul, resets ``LockIndex``
  to 0 (the client's entry carries none). A write that changes nothing keeps
  ``ModifyIndex``.
- ``CreateIndex``, ``ModifyIndex`` and ``X-Consul-Index`` come from one global
  index that every change advances.
- Sessions need a registered node: the stand-in's own node,
  :data:`AGENT_NODE` (used when ``Node`` is omitted), or one registered through
  the catalog; otherwise 500 ``Missing node registration`` as in Consul.

What it does not do: no raft, no cluster, no datacenters (``dc`` is
ignored), no ACLs (``X-Consul-Token`` is ignored), no blocking queries (GETs
answer at once), no health checks (``Checks`` may only be empty or Consul's
default ``serfHealth``), no transactions, no persistence. One process, state in
memory. TTLs are measured with :func:`time.monotonic` and checked lazily, at
the start of every request and of every inspection helper, so a GET never
shows a key held by a session whose TTL has run out. Bad input (unparsable
JSON, bad ``TTL`` or ``LockDelay``, unknown session to renew) gets a 4xx
answer with a text body, never a traceback.

Standard library only::

    with ConsulStandIn() as consul:
        # litefs.yml:  lease: {type: consul, consul: {url: <consul.url>, key: litefs/primary}}
        ...
        lease = consul.holder("litefs/primary")  # the session holding the lease, or None
        consul.expire_session(lease)             # the primary's lease runs out now

:meth:`ConsulStandIn.close` then :meth:`ConsulStandIn.start` again serves the
same state on the same port: an outage of Consul, during which TTLs keep
running.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from ._lifecycle import StartsAndCloses
from .serving import ServerThread, TrackingHTTPServer

if TYPE_CHECKING:
    from typing_extensions import Self  # typing's from Python 3.11

__all__ = ["AGENT_NODE", "ConsulStandIn"]

logger = logging.getLogger("litefs_route_devcluster")

#: The stand-in's own node, always registered; sessions created without ``Node`` belong to it.
AGENT_NODE = "consul-standin"
#: Consul's lock-delay when a session is created without ``LockDelay``, in nanoseconds.
DEFAULT_LOCK_DELAY_NS = 15_000_000_000
#: Consul's cap on the lock-delay it applies (``structs.MaxLockDelay``), in nanoseconds.
MAX_LOCK_DELAY_NS = 60_000_000_000
#: Consul's largest session TTL (``structs.SessionTTLMax``), in nanoseconds.
MAX_TTL_NS = 86_400_000_000_000
#: Consul's default ``kv_max_value_size``; larger bodies get 413.
MAX_BODY = 512 * 1024

# Consul's FixupLockDelay: a LockDelay below this many nanoseconds means seconds.
_LOCK_DELAY_SECONDS_BELOW = 1000
_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek small letter mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DIGITS = re.compile(r"[0-9]+")
# Query parameters that would change the shape of a GET's answer; refused rather than ignored.
_UNSUPPORTED_GET = ("recurse", "keys", "raw")


def _go_duration_ns(text: str) -> int:
    """Nanoseconds in a Go duration string (``time.ParseDuration``): ``"10s"``, ``"1m30s"``, ``"-1.5h"``, ``"0"``."""
    rest = text
    sign = 1
    if rest[:1] in ("+", "-"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"time: invalid duration {text!r}")
    total = Decimal(0)
    pos = 0
    while pos < len(rest):
        match = _DURATION_PART.match(rest, pos)
        if match is None:
            raise ValueError(f"time: invalid duration {text!r}")
        total += Decimal(match.group(1)) * _NS_PER_UNIT[match.group(2)]
        pos = match.end()
    return sign * int(total)


class _Reply(Exception):
    """Answer the request now with *status* and a text body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Session:
    id: str
    name: str
    node: str
    behavior: str
    ttl: str  # as the client sent it; echoed back
    ttl_ns: int  # 0: never expires
    lock_delay_ns: int
    create_index: int
    deadline: float | None  # monotonic; None: never expires

    def entry(self) -> dict[str, object]:
        """The session as Consul's JSON (``structs.Session``)."""
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": self.lock_delay_ns,
            "Behavior": self.behavior,
            "TTL": self.ttl,
            "NodeChecks": [],
            "ServiceChecks": [],
            "CreateIndex": self.create_index,
            "ModifyIndex": self.create_index,
        }


@dataclass
class _Entry:
    key: str
    value: bytes
    flags: int
    session: str  # "" when unlocked
    lock_index: int
    create_index: int
    modify_index: int

    def entry(self) -> dict[str, object]:
        """The key as Consul's JSON (``structs.DirEntry``): base64 value, ``null`` if empty; no Session if unlocked."""
        out: dict[str, object] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": base64.b64encode(self.value).decode("ascii") if self.value else None,
        }
        if self.session:
            out["Session"] = self.session
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


# (status, body, X-Consul-Index or None). A str body is sent as text, anything else as JSON.
_Response = tuple[int, object, int | None]


class _Server(TrackingHTTPServer):
    owner: ConsulStandIn


class ConsulStandIn(StartsAndCloses):
    """Consul's session, KV and catalog-register endpoints, in memory. See the module docstring.

    Listens on *host*:*port* (port 0: a free one, kept across :meth:`close` and
    :meth:`start`). Thread-safe: one lock guards all state. *clock* (default
    :func:`time.monotonic`) measures TTLs and lock-delays.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._host = host
        self._port = port
        self._clock = clock
        self._lock = threading.Lock()
        self._index = 1
        self._nodes: dict[str, str] = {AGENT_NODE.lower(): AGENT_NODE}
        self._sessions: dict[str, _Session] = {}
        self._kv: dict[str, _Entry] = {}
        self._lock_delays: dict[str, float] = {}  # key -> monotonic time the lock-delay ends
        self._serving = ServerThread(_Handler, self, host, port, "devcluster-consul", _Server)

    # -- life cycle --------------------------------------------------------

    def start(self) -> Self:
        """Listen and serve in a background thread. Returns self."""
        if self._serving.server is None:
            self._serving.start(poll_interval=0.01)
            logger.info("consul stand-in listening on %s", self.url)
        return self

    def close(self) -> None:
        """Stop listening and drop every client connection. Idempotent; state is kept."""
        if self._serving.server is not None:
            self._serving.close()
            logger.info("consul stand-in on port %d closed", self._serving.port)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` it listens on; RuntimeError when not started."""
        return self._serving.address

    @property
    def url(self) -> str:
        """``http://host:port``, for LiteFS's ``lease.consul.url``."""
        return self._serving.url

    # -- inspection, for tests ----------------------------------------------

    def holder(self, key: str) -> str | None:
        """The session holding *key*, or None (no such key, or not locked)."""
        with self._lock:
            self._reap_locked()
            entry = self._kv.get(key)
            return entry.session if entry is not None and entry.session else None

    def value(self, key: str) -> bytes | None:
        """The value of *key* (``b""`` if empty), or None if there is no such key."""
        with self._lock:
            self._reap_locked()
            entry = self._kv.get(key)
            return entry.value if entry is not None else None

    def sessions(self) -> list[str]:
        """The ids of the live sessions, oldest first."""
        with self._lock:
            self._reap_locked()
            return list(self._sessions)

    def expire_session(self, session_id: str) -> None:
        """Invalidate *session_id* now, as if its TTL ran out: applies its behavior and lock-delay.

        KeyError if there is no such (live) session.
        """
        with self._lock:
            self._reap_locked()
            session = self._sessions.get(session_id)
            if session is None:
                raise KeyError(session_id)
            logger.info("consul stand-in: session %s expired on request", session_id)
            self._invalidate_locked(session, self._clock())

    # -- state (call with self._lock held) ----------------------------------

    def _next_index(self) -> int:
        self._index += 1
        return self._index

    def _reap_locked(self) -> None:
        now = self._clock()
        expired = [s for s in self._sessions.values() if s.deadline is not None and now >= s.deadline]
        for session in sorted(expired, key=lambda s: s.deadline or 0.0):
            logger.info(
                "consul stand-in: session %s (%s) expired, not renewed within %s", session.id, session.name, session.ttl
            )
            self._invalidate_locked(session, session.deadline or now)
        for key, until in list(self._lock_delays.items()):
            if until <= now:
                del self._lock_delays[key]

    def _invalidate_locked(self, session: _Session, at: float) -> None:
        """Consul's deleteSessionTxn: drop the session, delete or release its keys, start their lock-delay at *at*."""
        del self._sessions[session.id]
        index = self._next_index()
        delay = min(session.lock_delay_ns, MAX_LOCK_DELAY_NS) / 1e9
        for key, entry in list(self._kv.items()):
            if entry.session != session.id:
                continue
            if session.behavior == "delete":
                del self._kv[key]
            else:
                entry.session = ""
                entry.modify_index = index
            if delay > 0:
                self._lock_delays[key] = at + delay
            logger.info(
                "consul stand-in: key %s %s (session %s invalidated), lock-delay %.3fs",
                key,
                "deleted" if session.behavior == "delete" else "released",
                session.id,
                delay,
            )

    def _write_locked(self, key: str, value: bytes, flags: int, session: str, lock_index: int) -> None:
        """Consul's kvsSetTxn: keep CreateIndex; a write that changes nothing keeps ModifyIndex."""
        existing = self._kv.get(key)
        if existing is not None and (existing.value, existing.flags, existing.session, existing.lock_index) == (
            value,
            flags,
            session,
            lock_index,
        ):
            return
        index = self._next_index()
        create_index = existing.create_index if existing is not None else index
        self._kv[key] = _Entry(key, value, flags, session, lock_index, create_index, index)

    # -- endpoints ---------------------------------------------------------

    def _handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> _Response:
        with self._lock:
            self._reap_locked()
            if path == "/v1/catalog/register":
                _require_method(method, "PUT")
                return 200, self._catalog_register(body), None
            if path == "/v1/session/create":
                _require_method(method, "PUT")
                return 200, self._session_create(body), None
            for prefix, action in (
                ("/v1/session/renew/", self._session_renew),
                ("/v1/session/destroy/", self._session_destroy),
            ):
                if path.startswith(prefix):
                    _require_method(method, "PUT")
                    session_id = path[len(prefix) :]
                    if not session_id:
                        raise _Reply(400, "Missing session")
                    return 200, action(session_id), None
            if path.startswith("/v1/kv/"):
                key = path[len("/v1/kv/") :]
                if method == "GET":
                    return self._kv_get(key, query)
                if method == "PUT":
                    return 200, self._kv_put(key, query, body), None
                if method == "DELETE":
                    return 200, self._kv_delete(key, query), None
                raise _Reply(405, f"method {method} not allowed")
        logger.warning("consul stand-in: no such endpoint: %s %s", method, path)
        raise _Reply(404, f"consul stand-in: no such endpoint: {method} {path}")

    def _catalog_register(self, body: bytes) -> bool:
        fields = _json_object(body)
        node = fields.get("node")
        if not isinstance(node, str) or not node:
            raise _Reply(400, "Must provide node")
        address = fields.get("address")
        if not isinstance(address, str) or not address:
            raise _Reply(400, "Must provide address")
        if self._nodes.get(node.lower()) != node:
            self._nodes[node.lower()] = node
            self._next_index()
            logger.debug("consul stand-in: node %s registered", node)
        return True

    def _session_create(self, body: bytes) -> dict[str, object]:
        fields = _json_object(body) if body.strip() else {}
        name = _string_field(fields, "name", "")
        node = _string_field(fields, "node", "") or AGENT_NODE
        behavior = _string_field(fields, "behavior", "") or "release"
        if behavior not in ("release", "delete"):
            raise _Reply(400, f"Invalid session behavior: {behavior}")
        ttl = _string_field(fields, "ttl", "")
        ttl_ns = 0
        if ttl:
            try:
                ttl_ns = _go_duration_ns(ttl)
            except ValueError as exc:
                raise _Reply(400, f"Session TTL '{ttl}' invalid: {exc}") from None
            if ttl_ns < 0 or ttl_ns > MAX_TTL_NS:
                raise _Reply(400, f"Invalid Session TTL '{ttl}', must be between [0s=24h0m0s]")
        raw_lock_delay = fields.get("lockdelay")
        # The Go client omits LockDelay when it is 0, so Consul's default applies then too.
        lock_delay_ns = DEFAULT_LOCK_DELAY_NS if raw_lock_delay is None else _lock_delay_ns(raw_lock_delay)
        for checks in ("checks", "nodechecks", "servicechecks"):
            value = fields.get(checks)
            if value not in (None, [], ["serfHealth"]):
                raise _Reply(400, f"consul stand-in: health checks are not supported ({checks}: {value!r})")
        if node.lower() not in self._nodes:
            raise _Reply(500, "Missing node registration")
        session_id = str(uuid.uuid4())
        deadline = self._clock() + ttl_ns / 1e9 if ttl_ns else None
        self._sessions[session_id] = _Session(
            session_id,
            name,
            self._nodes[node.lower()],
            behavior,
            ttl,
            ttl_ns,
            lock_delay_ns,
            self._next_index(),
            deadline,
        )
        logger.debug(
            "consul stand-in: session %s created (name=%s behavior=%s ttl=%s lock-delay=%dns)",
            session_id,
            name,
            behavior,
            ttl or "none",
            lock_delay_ns,
        )
        return {"ID": session_id}

    def _session_renew(self, session_id: str) -> list[dict[str, object]]:
        session = self._sessions.get(session_id)
        if session is None:
            raise _Reply(404, f"Session id '{session_id}' not found")
        if session.ttl_ns:
            session.deadline = self._clock() + session.ttl_ns / 1e9
        return [session.entry()]

    def _session_destroy(self, session_id: str) -> bool:
        session = self._sessions.get(session_id)
        if session is not None:
            logger.debug("consul stand-in: session %s destroyed", session_id)
            self._invalidate_locked(session, self._clock())
        return True

    def _kv_get(self, key: str, query: dict[str, list[str]]) -> _Response:
        for name in _UNSUPPORTED_GET:
            if name in query:
                raise _Reply(400, f"consul stand-in: ?{name} is not supported")
        if not key:
            raise _Reply(400, "Missing key name")
        entry = self._kv.get(key)
        if entry is None:
            return 404, "", self._index
        return 200, [entry.entry()], self._index

    def _kv_put(self, key: str, query: dict[str, list[str]], body: bytes) -> bool:
        if not key:
            raise _Reply(400, "Missing key name")
        modes = [name for name in ("cas", "acquire", "release") if name in query]
        if len(modes) > 1:
            raise _Reply(400, f"Conflicting flags: {', '.join(modes)}")
        flags = _uint_param(query, "flags")
        existing = self._kv.get(key)
        if "acquire" in query:
            return self._acquire(key, query["acquire"][0], body, flags)
        if "release" in query:
            session_id = query["release"][0]
            if not session_id:
                raise _Reply(500, "missing session")
            if existing is None or existing.session != session_id:
                return False
            # Consul's kvsUnlockTxn writes the request's entry: the body replaces the value.
            self._write_locked(key, body, flags, "", existing.lock_index)
            logger.debug("consul stand-in: key %s released by %s", key, session_id)
            return True
        if "cas" in query:
            cas = _uint_param(query, "cas")
            if (cas == 0 and existing is not None) or (cas != 0 and (existing is None or existing.modify_index != cas)):
                return False
        # A plain put keeps the holder; LockIndex is the request's, i.e. 0 (Consul's kvsSetTxn).
        self._write_locked(key, body, flags, existing.session if existing is not None else "", 0)
        return True

    def _acquire(self, key: str, session_id: str, body: bytes, flags: int) -> bool:
        until = self._lock_delays.get(key)
        now = self._clock()
        if until is not None and until > now:
            logger.debug("consul stand-in: lock of %s refused, lock-delay for %.3fs more", key, until - now)
            return False
        if not session_id:
            raise _Reply(500, "missing session")
        if session_id not in self._sessions:
            raise _Reply(500, f'invalid session "{session_id}"')
        existing = self._kv.get(key)
        if existing is None:
            lock_index = 1
        elif existing.session == session_id:
            lock_index = existing.lock_index
        elif existing.session:
            return False
        else:
            lock_index = existing.lock_index + 1
        self._write_locked(key, body, flags, session_id, lock_index)
        logger.debug("consul stand-in: key %s acquired by %s", key, session_id)
        return True

    def _kv_delete(self, key: str, query: dict[str, list[str]]) -> bool:
        if "recurse" in query:
            raise _Reply(400, "consul stand-in: ?recurse is not supported")
        if not key:
            raise _Reply(400, "Missing key name")
        existing = self._kv.get(key)
        if "cas" in query:
            cas = _uint_param(query, "cas")
            if existing is None:
                return True
            if existing.modify_index != cas:
                return False
        if existing is not None:
            del self._kv[key]
            self._next_index()
        return True


def _require_method(method: str, allowed: str) -> None:
    if method != allowed:
        raise _Reply(405, f"method {method} not allowed")


def _json_object(body: bytes) -> dict[str, object]:
    """A JSON object with its keys lower-cased (Go's decoder matches field names case-insensitively)."""
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _Reply(400, f"Request decode failed: {exc}") from None
    if not isinstance(decoded, dict):
        raise _Reply(400, f"Request decode failed: expected a JSON object, got {type(decoded).__name__}")
    return {str(k).lower(): v for k, v in decoded.items()}


def _string_field(fields: dict[str, object], name: str, default: str) -> str:
    value = fields.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _Reply(400, f"Request decode failed: {name} must be a string, got {value!r}")
    return value


def _lock_delay_ns(value: object) -> int:
    """Consul's FixupLockDelay: a Go duration string or a number of nanoseconds; under 1000 ns means seconds."""
    if isinstance(value, str):
        try:
            ns = _go_duration_ns(value)
        except ValueError as exc:
            raise _Reply(400, f"Request decode failed: {exc}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            ns = int(value)
        except (OverflowError, ValueError):  # inf, nan
            raise _Reply(400, f"Request decode failed: bad LockDelay {value!r}") from None
    else:
        raise _Reply(400, f"Request decode failed: LockDelay must be a duration string or a number, got {value!r}")
    if ns < 0:
        raise _Reply(400, f"Request decode failed: negative LockDelay {value!r}")
    return ns * 1_000_000_000 if ns < _LOCK_DELAY_SECONDS_BELOW else ns


def _uint_param(query: dict[str, list[str]], name: str) -> int:
    text = query.get(name, ["0"])[0]
    if not _DIGITS.fullmatch(text) or int(text) >= 2**64:
        raise _Reply(400, f"?{name} must be an unsigned integer, got {text!r}")
    return int(text)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "consul-standin"
    sys_version = ""
    # A client that stalls mid-request loses its connection after this many seconds.
    timeout = 30

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("consul stand-in: %s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        index: int | None = None
        try:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query, keep_blank_values=True)
            body = self._read_body()
            status, payload, index = self.server.owner._handle(self.command, unquote(parts.path), query, body)
        except _Reply as reply:
            status, payload = reply.status, reply.message
        except Exception:
            logger.exception("consul stand-in: %s %s failed", self.command, self.path)
            status, payload = 500, "consul stand-in: internal error (see the log)"
        self._send(status, payload, index)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        text = self.headers.get("Content-Length")
        if not text:
            return b""
        if not _DIGITS.fullmatch(text.strip()):
            raise _Reply(400, f"bad Content-Length {text!r}")
        length = int(text)
        if length > MAX_BODY:
            raise _Reply(413, f"Request body({length} bytes) too large, max size: {MAX_BODY} bytes")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _Reply(400, "bad chunked body") from None
            if size == 0:
                break
            total += size
            if total > MAX_BODY:
                raise _Reply(413, f"Request body too large, max size: {MAX_BODY} bytes")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _send(self, status: int, payload: object, index: int | None) -> None:
        if isinstance(payload, str):
            data, content_type = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(payload, separators=(",", ":")).encode(), "application/json"
        with contextlib.suppress(OSError):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if index is not None:
                # What Consul's setMeta sends; the Go client's parseQueryMeta reads these.
                self.send_header("X-Consul-Index", str(index))
                self.send_header("X-Consul-KnownLeader", "true")
                self.send_header("X-Consul-LastContact", "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
