"""LiteFS's event stream: what ``GET /events`` on its HTTP API says, typed.

LiteFS (``http.addr``, ``:20202`` by default) streams newline-delimited JSON,
one object per event (checked on LiteFS v0.5.14, ``tests/test_events.py``)::

    {"type":"init","data":{"isPrimary":false,"hostname":"node1"}}
    {"type":"tx","db":"app.db","data":{"txID":"0000000000000027","postApplyChecksum":"83b05248774ce767",
     "pageSize":4096,"commit":2,"timestamp":"2026-12-02T00:00:00Z"}}
    {"type":"primaryChange","data":{"isPrimary":false}}

``init`` comes first on every connection and gives the node's view then; a
``tx`` follows every transaction applied to a database, on the primary and on
replicas (its TXID is what ``<db>-pos`` then shows); ``primaryChange`` follows
every change of primary. ``hostname`` is *omitted*, not empty, when no
primary is known, and on the primary itself. LiteFS closes a subscriber whose
1,024-event buffer fills up: a reader must then reconnect and re-read the
node's state, since events were lost.

:func:`parse_event` is pure and never raises: an event type it does not
use is None (newer LiteFS versions may add event types), a line it cannot
trust is :class:`Unusable`, and nothing it returns carries an unchecked
string (hostnames are validated as instance ids, database names as plain
file names). :func:`read_events` is the blocking reader (run it in a
thread); it ends the stream, as an error, at the first unusable line.
"""

from __future__ import annotations

import codecs
import contextlib

# getaddrinfo() and http.client encode a str host name with the "idna" codec,
# which Python imports on first use. Imported in the event stream's thread,
# that import could be cut in half by a fork (gunicorn --preload forks while
# the master's thread runs): the child would find a half-initialised
# encodings.idna, and the codec registry caches that failure for good
# ("LookupError: unknown encoding: idna" on every reconnection). Looked up
# here, while the module is imported, the codec is in the registry's cache
# before any thread of ours runs.
import encodings.idna  # noqa: F401
import http.client
import ipaddress
import json
import re
import socket
import time
from collections.abc import Generator
from dataclasses import dataclass
from urllib.parse import urlsplit

from ._mount import NodeState, Role, is_valid_instance_id

codecs.lookup("idna")

__all__ = [
    "EventStreamClosed",
    "Init",
    "LiteFSEvent",
    "PrimaryChange",
    "Quiet",
    "Tx",
    "Unusable",
    "node_state",
    "parse_event",
    "read_candidate",
    "read_events",
    "read_info",
    "read_txids",
]

_HEX16 = re.compile(r"[0-9a-f]{16}")
# LiteFS's lines are short; a longer one is not LiteFS's and is not parsed.
_LINE_LIMIT = 4096
# Bytes of events the kernel holds for a reader (a few hundred events).
_RECEIVE_BUFFER = 65536
_HEAD_LIMIT = 16384
_HEX_SIZE = re.compile(rb"[0-9a-fA-F]{1,8}")
_METRICS_LIMIT = 4 * 1024 * 1024
# litefs_db_txid{db="app.db"} 27  (Prometheus text format; the value may be written as 2.7e+01)
_TXID_METRIC = re.compile(rb'litefs_db_txid\{db="([A-Za-z0-9][A-Za-z0-9._-]{0,127})"\} ([0-9.eE+]{1,32})')


class EventStreamClosed(ConnectionError):
    """The event stream ended (LiteFS stopped, or closed a subscriber that fell behind)."""


@dataclass(frozen=True, slots=True)
class Init:
    """The node's view when the stream (re)connects."""

    is_primary: bool
    #: The primary's hostname (its lease hostname: on Fly, the Machine ID);
    #: None on the primary itself and when no primary is known.
    primary: str | None


@dataclass(frozen=True, slots=True)
class PrimaryChange:
    """The primary changed (or became unknown)."""

    is_primary: bool
    #: As :attr:`Init.primary`.
    primary: str | None


@dataclass(frozen=True, slots=True)
class Tx:
    """A transaction was applied to *database* on this node."""

    database: str
    txid: int
    checksum: int


LiteFSEvent = Init | PrimaryChange | Tx


@dataclass(frozen=True, slots=True)
class Unusable:
    """A line that is LiteFS's but cannot be trusted (malformed, hostile, cut short): the stream is not followed."""

    #: Why, for the log (never the line's content).
    reason: str


def parse_event(line: bytes) -> LiteFSEvent | Unusable | None:
    """The event on one line of the stream; None for an event type we do not use; :class:`Unusable` if malformed.

    Never raises. A reader must stop trusting a stream that sent an
    :class:`Unusable` line: ignoring a ``primaryChange`` it could not read
    would keep routing to the previous primary.
    """
    if len(line) > _LINE_LIMIT:
        return Unusable(f"a line over {_LINE_LIMIT} bytes")
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return Unusable("a line that is not JSON")
    if not isinstance(obj, dict):
        return Unusable("a line that is not a JSON object")
    kind = obj.get("type")
    if kind not in ("init", "primaryChange", "tx"):
        return None  # newer LiteFS versions may add event types
    data = obj.get("data")
    if not isinstance(data, dict):
        return Unusable(f"a {kind} event without data")
    if kind in ("init", "primaryChange"):
        is_primary = data.get("isPrimary")
        hostname = data.get("hostname", "")
        if not isinstance(is_primary, bool) or not isinstance(hostname, str):
            return Unusable(f"a {kind} event with malformed fields")
        if hostname and not is_valid_instance_id(hostname):
            return Unusable(f"a {kind} event whose hostname is not a host name")
        primary = hostname or None
        return Init(is_primary, primary) if kind == "init" else PrimaryChange(is_primary, primary)
    database, txid, checksum = obj.get("db"), data.get("txID"), data.get("postApplyChecksum")
    if not (isinstance(database, str) and database and "/" not in database and not database.startswith(".")):
        return Unusable("a tx event whose database is not a file name")
    if not (isinstance(txid, str) and _HEX16.fullmatch(txid)) or not (
        isinstance(checksum, str) and _HEX16.fullmatch(checksum)
    ):
        return Unusable("a tx event with a malformed TXID or checksum")
    return Tx(database, int(txid, 16), int(checksum, 16))


def node_state(event: Init | PrimaryChange, instance_id: str) -> NodeState:
    """The node's state as *event* describes it, in the terms :mod:`litefs_route._mount` uses."""
    kind = "init" if isinstance(event, Init) else "primaryChange"
    if event.is_primary:
        return NodeState(Role.PRIMARY, instance_id, instance_id, detail=f"{kind}: isPrimary", litefs_seen=True)
    if event.primary is None:
        return NodeState(Role.NO_PRIMARY, instance_id, None, detail=f"{kind}: no primary", litefs_seen=True)
    if event.primary == instance_id:  # as .primary naming this instance
        return NodeState(
            Role.PRIMARY, instance_id, instance_id, detail=f"{kind}: names this instance", litefs_seen=True
        )
    return NodeState(Role.REPLICA, instance_id, event.primary, detail=f"{kind}: primary known", litefs_seen=True)


@dataclass(frozen=True, slots=True)
class Quiet:
    """Nothing arrived for ``quiet_after`` seconds; the stream is still open (see :func:`read_events`)."""


def read_events(
    api_url: str,
    *,
    timeout: float | None = 5.0,
    deadline: float | None = None,
    connect_timeout: float | None = None,
    quiet_after: float | None = None,
) -> Generator[LiteFSEvent | Quiet, None, None]:
    """Connect to LiteFS's API at *api_url* and yield its events as they come (blocking).

    Raises OSError if LiteFS cannot be reached, and :class:`EventStreamClosed`
    (an OSError too) if it refuses, sends a line that cannot be trusted, or a
    stream that was up ends. *timeout* bounds the connection and each wait
    for a line; LiteFS sends nothing while nothing happens, so a quiet stream
    raises ``TimeoutError`` after *timeout* seconds of silence: pass None to
    wait for ever (a stopped LiteFS still ends the stream). With
    *quiet_after*, a silence that long yields :class:`Quiet` instead, and the
    stream goes on (its reader may check that LiteFS is still there).
    *connect_timeout*, if given, bounds the connection and the response's head
    instead of *timeout*. *deadline* (a ``time.monotonic()`` value) bounds the
    whole stream: past it, TimeoutError.
    """
    parts = urlsplit(api_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the LiteFS API URL must be http://host:port, got {api_url!r}")
    head_timeout = timeout if connect_timeout is None else connect_timeout
    host, port = parts.hostname, parts.port or 20202
    stream = _EventSocket(_connect(host, port, head_timeout), deadline)
    try:
        stream.sock.sendall(
            f"GET /events HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n".encode("ascii")
        )
        stream.read_head(head_timeout)
        # Silence is "no event", not "no byte": a line dripped a byte at a
        # time, or blank lines, must not keep the quiet check from running.
        last_event = time.monotonic()
        while True:
            wait = timeout if quiet_after is None else max(0.0, last_event + quiet_after - time.monotonic())
            line = stream.next_line(wait)
            if line is None:
                if quiet_after is None:
                    raise TimeoutError(f"LiteFS's event stream sent no event for {timeout} s")
                yield Quiet()
                last_event = time.monotonic()
                continue
            event = parse_event(line)
            if isinstance(event, Unusable):
                raise EventStreamClosed(f"LiteFS's event stream sent {event.reason}")
            if event is not None:
                last_event = time.monotonic()
                yield event
    finally:
        stream.sock.close()


class _EventSocket:
    """The HTTP/1.1 response to ``GET /events``, read straight from the socket.

    Not :mod:`http.client`: a socket timeout while it buffers leaves its
    reader in an undefined state, and a quiet stream times out by design.
    Here a wait that times out has consumed nothing.
    """

    __slots__ = ("body", "chunk_left", "chunked", "crlf_left", "deadline", "ended", "raw", "sock")

    def __init__(self, sock: socket.socket, deadline: float | None) -> None:
        self.sock = sock
        self.deadline = deadline
        self.raw = bytearray()  # received, not decoded yet
        self.body = bytearray()  # decoded: lines of events
        self.chunked = False
        self.chunk_left = 0  # data bytes left in the current chunk
        self.crlf_left = 0  # bytes of the CRLF after a chunk's data still to skip
        self.ended = False  # the last chunk came: what is buffered is all there is

    def _receive(self, timeout: float | None) -> bool:
        """Read what the socket has (waiting at most *timeout*); False if nothing came in time."""
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the deadline passed while waiting on LiteFS's event stream")
            timeout = remaining if timeout is None else min(timeout, remaining)
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise
            return False
        if not data:
            raise EventStreamClosed("LiteFS closed the event stream")
        self.raw += data
        return True

    def read_head(self, timeout: float | None) -> None:
        while (end := self.raw.find(b"\r\n\r\n")) < 0:
            if len(self.raw) > _HEAD_LIMIT:
                raise EventStreamClosed("the reply to GET /events has an oversized head")
            if not self._receive(timeout):
                raise TimeoutError("LiteFS did not answer GET /events in time")
        head = bytes(self.raw[:end]).decode("latin-1").split("\r\n")
        del self.raw[: end + 4]
        status = head[0].split(" ", 2)
        if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "200":
            raise EventStreamClosed(f"LiteFS answered {head[0][:64]!r} to GET /events")
        for field in head[1:]:
            name, _, value = field.partition(":")
            if name.strip().lower() == "transfer-encoding":
                self.chunked = "chunked" in value.lower()

    def next_line(self, timeout: float | None) -> bytes | None:
        """The next line of events (at most _LINE_LIMIT + 1 bytes); None if no whole line came within *timeout*.

        *timeout* bounds the wait for the whole line, however its bytes trickle in.
        """
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            self._decode()  # what came in with the head, or since
            end = self.body.find(b"\n")
            if end >= 0:
                line = bytes(self.body[: end + 1])
                del self.body[: end + 1]
                return line
            if len(self.body) > _LINE_LIMIT:
                return bytes(self.body)  # over the limit: parse_event calls it unusable
            if self.ended:  # after every line that came before the end
                raise EventStreamClosed("LiteFS ended the event stream")
            left = None if until is None else until - time.monotonic()
            if (left is not None and left <= 0) or not self._receive(left):
                return None

    def _decode(self) -> None:
        if self.ended:
            return
        if not self.chunked:
            self.body += self.raw
            self.raw.clear()
            return
        while self.raw:
            if self.crlf_left:
                skip = min(self.crlf_left, len(self.raw))
                del self.raw[:skip]
                self.crlf_left -= skip
            elif self.chunk_left:
                take = min(self.chunk_left, len(self.raw))
                self.body += self.raw[:take]
                del self.raw[:take]
                self.chunk_left -= take
                if not self.chunk_left:
                    self.crlf_left = 2
            else:
                end = self.raw.find(b"\r\n")
                if end < 0:
                    if len(self.raw) > 64:
                        raise EventStreamClosed("the event stream's chunk framing is broken")
                    return
                size = bytes(self.raw[:end]).split(b";")[0].strip()
                del self.raw[: end + 2]
                if not _HEX_SIZE.fullmatch(size):
                    raise EventStreamClosed("the event stream's chunk framing is broken")
                if int(size, 16) == 0:
                    self.ended = True
                    return
                self.chunk_left = int(size, 16)


def _connect(host: str, port: int, timeout: float | None) -> socket.socket:
    """A connection whose socket buffers at most _RECEIVE_BUFFER bytes of events.

    Left to the kernel, a receive buffer grows to tens of megabytes: a reader
    that stalls would later work through a backlog of stale events, and LiteFS
    would notice late that it fell behind. Bounded here (LiteFS's own send
    buffer still holds up to ``tcp_wmem``'s maximum, a few megabytes), LiteFS
    drops a stalled reader once that and its 1,024-event channel are full;
    the reader then reconnects and re-reads the state, as it must.
    """
    error: OSError | None = None
    for family, kind, proto, address in _addresses(host, port):
        sock = socket.socket(family, kind, proto)
        try:
            # Before connect(): the window advertised in the handshake depends on it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error if error is not None else OSError(f"cannot resolve {host}")


def _addresses(host: str, port: int) -> list[tuple[int, int, int, tuple[str, int] | tuple[str, int, int, int]]]:
    """Where *host*:*port* is: an IP address as it is (no resolver, no codec), a name through getaddrinfo()."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if ip.version == 4:
            return [(socket.AF_INET, socket.SOCK_STREAM, 0, (host, port))]
        return [(socket.AF_INET6, socket.SOCK_STREAM, 0, (host, port, 0, 0))]
    try:
        name: str | bytes = host.encode("ascii")  # bytes: getaddrinfo() needs no codec for them
    except UnicodeEncodeError:
        name = host  # an internationalised name: the idna codec, looked up at import
    return [
        (family, kind, proto, address)  # type: ignore[misc]
        for family, kind, proto, _, address in socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    ]


def read_info(api_url: str, *, timeout: float = 2.0) -> Init | None:
    """LiteFS's view now, from ``GET /info``, in the terms of an ``init`` event (blocking).

    None if the answer does not have the fields of LiteFS v0.5.7 and later
    (``isPrimary``, ``primary.hostname``; v0.5.5 and v0.5.6 had ``primary``
    as a bool). Raises OSError if LiteFS cannot be reached or does not answer
    200 in time.
    """
    info = _get_json(api_url, "/info", timeout)
    primary = info.get("primary") if isinstance(info, dict) else None
    hostname = primary.get("hostname", "") if isinstance(primary, dict) else None
    is_primary = info.get("isPrimary") if isinstance(info, dict) else None
    if not isinstance(is_primary, bool) or not isinstance(hostname, str):
        return None
    if is_primary:
        return Init(True, None)  # /info names the primary itself; the stream does not
    if hostname and not is_valid_instance_id(hostname):
        return None
    return Init(False, hostname or None)


def read_candidate(api_url: str, *, timeout: float = 2.0) -> bool | None:
    """Whether this LiteFS node may become primary (``lease.candidate``), from ``GET /info``; None if not said.

    Raises OSError if LiteFS cannot be reached or does not answer 200 in time.
    """
    info = _get_json(api_url, "/info", timeout)
    candidate = info.get("candidate") if isinstance(info, dict) else None
    return candidate if isinstance(candidate, bool) else None


def read_txids(api_url: str, *, timeout: float = 2.0) -> dict[str, int]:
    """Each database's TXID from LiteFS's ``/metrics`` (``litefs_db_txid``), blocking; {} if it has none.

    Raises OSError if LiteFS cannot be reached or does not answer 200 in time.
    """
    txids: dict[str, int] = {}
    for line in _get(api_url, "/metrics", timeout, _METRICS_LIMIT).splitlines():
        match = _TXID_METRIC.fullmatch(line.strip())
        if match is not None:
            with contextlib.suppress(ValueError, OverflowError):
                txids[match[1].decode()] = int(float(match[2]))  # a gauge: exact below 2**53
    return txids


def _get_json(api_url: str, path: str, timeout: float) -> object:
    try:
        return json.loads(_get(api_url, path, timeout, _HEAD_LIMIT))
    except (ValueError, RecursionError):
        return None


def _get(api_url: str, path: str, timeout: float, limit: int) -> bytes:
    parts = urlsplit(api_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the LiteFS API URL must be http://host:port, got {api_url!r}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 20202, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read(limit)
        if response.status != 200:
            raise EventStreamClosed(f"LiteFS answered {response.status} to GET {path}")
        return body
    except http.client.HTTPException as exc:
        raise EventStreamClosed(f"LiteFS's answer to GET {path} is not HTTP: {exc!r}") from exc
    finally:
        conn.close()
