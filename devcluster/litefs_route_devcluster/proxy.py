"""A local stand-in for Fly's edge proxy: round-robin plus ``fly-replay``.

:class:`FrontProxy` imitates the parts of Fly's proxy that litefs-route
depends on, and nothing else:

- requests are load-balanced round-robin over the instances; an instance that
  refuses the connection is skipped (as Fly skips a stopped Machine);
- with *health_path*, each instance's health check (``GET`` that path, as the
  middleware's ``health_path`` answers it) runs every *health_interval*
  seconds, and an instance whose check fails (not 2xx, or no answer) is taken
  out of the load-balanced rotation until a check passes again, as Fly's
  proxy stops sending traffic to a Machine whose health checks fail. While
  no instance passes, every instance is in rotation (what else could serve?).
  ``fly-force-instance-id`` and ``fly-replay: instance=`` still reach it;
- ``fly-force-instance-id: <id>`` sends the request straight to that instance;
- a response carrying ``fly-replay`` is discarded and the *whole original
  request* (method, path and query, headers, body) is sent again to the
  instance it names (``instance=``; ``prefer_instance=``, ``region=`` and
  ``elsewhere=true`` are honoured in a simple way), with
  ``fly-replay-src: instance=<sender>;region=<region>;t=<µs>;state=<state>``;
- a request is replayed at most 10 times; the next ``fly-replay`` is answered
  ``502`` with a body naming Fly's error code ``PA02`` and "replay limit";
- a request whose body is over 1 MB is forwarded once but cannot be
  replayed: its ``fly-replay`` is answered ``502`` ("body too large to replay");
- a replay whose target cannot be reached (no such instance: ``no_candidate``;
  connections refused until fly-replay's ``timeout=`` (``5s``, ``800ms``):
  ``timeout``; without one, three attempts: ``retries_exhausted``) is answered
  ``502``, or with ``fallback=force_self|prefer_self`` sent back to the
  instance that asked for it, carrying ``fly-replay-failed:
  instance=…;app=…;region=…;replay_source=…;reason=…;elapsed_ms=…``; a
  ``fly-replay`` in the answer to that is refused (``502``), as Fly refuses it;
- responses stream through chunk by chunk, never buffered.

Every error the proxy makes itself carries ``fly-devcluster-error: <code>``.

Standard library only (``http.server`` + ``http.client``)::

    with FrontProxy({"a": ("127.0.0.1", 8001), "b": ("127.0.0.1", 8002)}) as front:
        urllib.request.urlopen(front.url + "/")
        front.replays       # [ReplayEvent(...)], what was replayed to whom
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

from ._lifecycle import StartsAndCloses
from .serving import ServerThread, TrackingHTTPServer

if TYPE_CHECKING:
    from typing_extensions import Self  # typing's from Python 3.11

__all__ = [
    "DEFAULT_HEALTH_INTERVAL",
    "MAX_REPLAYS",
    "REPLAY_BODY_LIMIT",
    "FrontProxy",
    "ReplayEvent",
    "parse_fly_replay",
]

logger = logging.getLogger("litefs_route_devcluster")

#: Fly replays one request at most this many times, then answers PA02.
MAX_REPLAYS = 10
#: Fly cannot replay a request whose body is larger than this.
REPLAY_BODY_LIMIT = 1_000_000
# A replay's target that refuses the connection is tried again this often
# until fly-replay's timeout; without one, this many times in all.
_RECONNECT_EVERY = 0.05
_ATTEMPTS_WITHOUT_TIMEOUT = 3
_DURATION = re.compile(r"([0-9]{1,6})(ms|s)")

# Hop-by-hop headers (RFC 9110 7.6.1): never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Headers Fly's edge sets itself; a client's copy is dropped.
_EDGE_SET = frozenset({"fly-replay-src", "fly-request-id", "fly-client-ip"})
_READ_SIZE = 65536
_UPSTREAM_TIMEOUT = 300.0
#: Seconds between two rounds of health checks (Fly's are configured per app; a dev cluster wants them quick).
DEFAULT_HEALTH_INTERVAL = 1.0
# Seconds a health check waits for its answer: a dead instance refuses or answers 503 at once, so only a
# slow one (a busy machine) waits, and that one is not to be taken for dead.
_HEALTH_TIMEOUT = 2.0


def parse_fly_replay(value: str) -> dict[str, str]:
    """The fields of a ``fly-replay`` header: ``"instance=a;state=s"`` -> ``{"instance": "a", "state": "s"}``.

    Field names are lower-cased; blank or malformed fields are skipped.
    """
    fields: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, val = part.partition("=")
        name = name.strip().lower()
        if sep and name:
            fields[name] = val.strip()
    return fields


@dataclass(frozen=True)
class ReplayEvent:
    """One replay the proxy performed (or refused)."""

    #: The ``fly-request-id`` the proxy gave the original request.
    request_id: str
    method: str
    #: Path and query string.
    target: str
    #: The instance whose response asked for the replay.
    from_instance: str
    #: The instance the request was replayed to (None if refused).
    to_instance: str | None
    #: The ``state`` field of the ``fly-replay`` header, if any.
    state: str | None
    #: Which replay of this request this is (1 for the first).
    hop: int
    #: Why it was refused ("replay-limit", "body-too-large", "no-target"), or None.
    refused: str | None = None
    #: When the proxy saw the ``fly-replay`` (``time.monotonic()``), before it tried the target.
    at: float = dataclasses.field(default_factory=time.monotonic)


class _ProxyError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _Server(TrackingHTTPServer):
    owner: FrontProxy


class FrontProxy(StartsAndCloses):
    """Fly's edge for a set of local instances. See the module docstring.

    *instances* maps instance id to ``(host, port)``. *regions* maps instance
    id to its region (default *default_region*), used in ``fly-replay-src``
    and for ``fly-replay: region=``. The proxy listens on *host*:*port*
    (port 0: a free one; see :attr:`url`). *health_path*: the instances'
    health check, run every *health_interval* seconds (see the module
    docstring; :attr:`in_rotation`); None: none, every instance is in rotation.

    Thread-safe; :meth:`set_instances` may be called while traffic flows.
    """

    def __init__(
        self,
        instances: Mapping[str, tuple[str, int]],
        *,
        regions: Mapping[str, str] | None = None,
        default_region: str = "local",
        host: str = "127.0.0.1",
        port: int = 0,
        max_replays: int = MAX_REPLAYS,
        replay_body_limit: int = REPLAY_BODY_LIMIT,
        app_name: str = "devcluster",
        health_path: str | None = None,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
    ) -> None:
        if health_path is not None and not health_path.startswith("/"):
            raise ValueError(f"health_path must be a path starting with '/', got {health_path!r}")
        self._lock = threading.Lock()
        self._instances: dict[str, tuple[str, int]] = {}
        #: Instances whose last health check failed (out of the rotation).
        self._failing: set[str] = set()
        self.health_path = health_path
        self.health_interval = health_interval
        self._checks_stopped = threading.Event()
        self._checker: threading.Thread | None = None
        self._checked_rounds = 0
        self._checked = threading.Condition(self._lock)
        self._regions: dict[str, str] = {}
        self._rr = itertools.count()
        self.default_region = default_region
        self.max_replays = max_replays
        self.replay_body_limit = replay_body_limit
        #: What ``fly-replay-failed``'s ``app`` field says.
        self.app_name = app_name
        self.set_instances(instances, regions)
        self._host = host
        self._port = port
        self._serving = ServerThread(_Handler, self, host, port, "devcluster-front", _Server)
        #: Every replay performed or refused, in order.
        self.replays: list[ReplayEvent] = []
        #: Instance id -> how many final responses it served.
        self.served: dict[str, int] = {}

    # -- configuration ---------------------------------------------------

    def set_instances(self, instances: Mapping[str, tuple[str, int]], regions: Mapping[str, str] | None = None) -> None:
        """Replace the instance table (and, if given, the regions)."""
        with self._lock:
            self._instances = dict(instances)
            if regions is not None:
                self._regions = dict(regions)

    @property
    def instances(self) -> dict[str, tuple[str, int]]:
        with self._lock:
            return dict(self._instances)

    def region_of(self, instance_id: str) -> str:
        with self._lock:
            return self._regions.get(instance_id, self.default_region)

    # -- health checks -------------------------------------------------------

    @property
    def in_rotation(self) -> list[str]:
        """The instances load-balanced requests go to now: those whose health check passes (or all, if none does)."""
        with self._lock:
            return self._rotation()

    def rotation_summary(self) -> str | None:
        """One line for a status: who is in rotation and who is out; None without health checks."""
        if self.health_path is None:
            return None
        with self._lock:
            out = sorted(self._failing & set(self._instances))
            return f"in rotation: {', '.join(self._rotation())}" + (
                f"; failing {self.health_path}: {', '.join(out)}" if out else ""
            )

    def _rotation(self) -> list[str]:
        ids = sorted(self._instances)
        return [i for i in ids if i not in self._failing] or ids

    def wait_checked(self, timeout: float = 10.0) -> None:
        """Wait until a whole round of health checks has run after this call (TimeoutError if none did)."""
        if self.health_path is None:
            raise RuntimeError("this front runs no health checks (health_path=None)")
        with self._checked:
            target = self._checked_rounds + 2  # the round under way may have started before the call
            if not self._checked.wait_for(lambda: self._checked_rounds >= target, timeout):
                raise TimeoutError(f"no round of health checks finished within {timeout:g} s")

    def _check_health(self) -> None:
        """The checker thread: every instance's health check, every ``health_interval`` seconds."""
        assert self.health_path is not None
        warned: set[str] = set()
        while not self._checks_stopped.is_set():
            for instance_id, address in sorted(self.instances.items()):
                status = _health_status(address, self.health_path, timeout=_HEALTH_TIMEOUT)
                if status == 404 and instance_id not in warned:
                    warned.add(instance_id)
                    logger.warning(
                        "front: %s answers 404 to its health check %s: give the middleware health_path=%r",
                        instance_id,
                        self.health_path,
                        self.health_path,
                    )
                passing = status is not None and 200 <= status < 300
                with self._lock:
                    was_failing = instance_id in self._failing
                    if passing:
                        self._failing.discard(instance_id)
                    elif instance_id in self._instances:
                        self._failing.add(instance_id)
                if passing == was_failing:
                    logger.info(
                        "front: %s %s (health check %s: %s)",
                        instance_id,
                        "back in rotation" if passing else "out of rotation",
                        self.health_path,
                        status or "no answer",
                    )
            with self._checked:
                self._checked_rounds += 1
                self._checked.notify_all()
            self._checks_stopped.wait(self.health_interval)

    # -- life cycle --------------------------------------------------------

    def start(self) -> Self:
        """Start listening (in a background thread). Returns self."""
        if self._serving.server is None:
            self._serving.start()
            logger.info("front proxy listening on %s", self.url)
        if self.health_path is not None and self._checker is None:
            self._checker = threading.Thread(target=self._check_health, name="devcluster-front-health", daemon=True)
            self._checker.start()
        return self

    def close(self) -> None:
        """Stop listening, checking health and drop every client connection. Idempotent."""
        self._checks_stopped.set()
        if self._checker is not None:
            self._checker.join(10)
        self._serving.close()

    @property
    def address(self) -> tuple[str, int]:
        return self._serving.address

    @property
    def url(self) -> str:
        return self._serving.url

    # -- statistics --------------------------------------------------------

    @property
    def replay_count(self) -> int:
        """How many replays were performed (refusals not counted)."""
        with self._lock:
            return sum(1 for event in self.replays if event.refused is None)

    def replays_to(self, instance_id: str) -> list[ReplayEvent]:
        with self._lock:
            return [event for event in self.replays if event.to_instance == instance_id]

    def reset_stats(self) -> None:
        with self._lock:
            self.replays.clear()
            self.served.clear()

    # -- routing (called from handler threads) ---------------------------

    def _record(self, event: ReplayEvent) -> None:
        with self._lock:
            self.replays.append(event)
        logger.debug("replay %s", event)

    def _served(self, instance_id: str) -> None:
        with self._lock:
            self.served[instance_id] = self.served.get(instance_id, 0) + 1

    def _round_robin(self, exclude: str | None = None, region: str | None = None) -> list[str]:
        """Instance ids in the order to try for a load-balanced request."""
        with self._lock:
            ids = self._rotation()
            start = next(self._rr)
            if region is not None:
                ids = [i for i in ids if self._regions.get(i, self.default_region) == region]
        if not ids:
            return []
        ordered = ids[start % len(ids) :] + ids[: start % len(ids)]
        return [i for i in ordered if i != exclude] or ordered

    def _address(self, instance_id: str) -> tuple[str, int] | None:
        with self._lock:
            return self._instances.get(instance_id)

    def _replay_targets(self, fields: Mapping[str, str], sender: str) -> list[str]:
        """The instances to try for a replay, from ``fly-replay``'s fields."""
        instance = fields.get("instance")
        if instance:
            return [instance]
        exclude = sender if fields.get("elsewhere", "").lower() == "true" else None
        preferred = fields.get("prefer_instance")
        rest = self._round_robin(exclude=exclude, region=fields.get("region") or None)
        if preferred:
            return [preferred] + [i for i in rest if i != preferred]
        return rest


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    request_id: str

    def with_header(self, name: str, value: str) -> _Request:
        """The same request with one more header (what the edge adds to a replayed or sent-back request)."""
        return dataclasses.replace(self, headers=[*self.headers, (name, value)])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # Idle keep-alive connections are closed after this many seconds.
    timeout = 60
    # The request being proxied (echoed in the response, as Fly's edge does).
    _request_id: str | None = None

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("front: " + format, *args)

    # Every method goes through the same path.
    def do_GET(self) -> None:
        self._proxy()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_TRACE = do_GET

    # -- request -------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(8192).strip():
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(8)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _request(self) -> _Request:
        body = self._read_body()
        request_id = uuid.uuid4().hex
        client_ip = self.client_address[0]
        headers = [
            (name, value)
            for name, value in self.headers.items()
            if name.lower() not in _HOP_BY_HOP and name.lower() not in _EDGE_SET and name.lower() != "content-length"
        ]
        forwarded_for = self.headers.get("X-Forwarded-For")
        headers = [h for h in headers if h[0].lower() not in ("x-forwarded-for", "x-forwarded-proto")]
        headers += [
            ("Fly-Request-Id", request_id),
            ("Fly-Client-IP", client_ip),
            ("X-Forwarded-For", f"{forwarded_for}, {client_ip}" if forwarded_for else client_ip),
            ("X-Forwarded-Proto", "http"),
        ]
        if body or self.command not in ("GET", "HEAD", "OPTIONS", "TRACE", "DELETE"):
            headers.append(("Content-Length", str(len(body))))
        return _Request(self.command, self.path, headers, body, request_id)

    # -- the proxy loop ----------------------------------------------------

    def _proxy(self) -> None:
        front = self.server.owner
        self._request_id = None
        try:
            request = self._request()
            self._request_id = request.request_id
        except (ValueError, OSError):
            self.close_connection = True
            self._error(_ProxyError(400, "bad-request", "could not read the request"))
            return
        forced = self.headers.get("fly-force-instance-id", "").strip()
        try:
            if forced:
                if front._address(forced) is None:
                    raise _ProxyError(502, "unknown-instance", f"fly-force-instance-id: no instance {forced!r}")
                candidates = [forced]
            else:
                candidates = front._round_robin()
            response, conn, instance = self._send_first(request, candidates)
            hop = 0
            while True:
                replay = response.getheader("fly-replay")
                if replay is None:
                    break
                _discard(response, conn)
                fields = parse_fly_replay(replay)
                state = fields.get("state")
                hop += 1

                refused = _Refusal(
                    front, ReplayEvent(request.request_id, request.method, request.target, instance, None, state, hop)
                )
                if hop > front.max_replays:
                    raise refused(
                        "replay-limit",
                        502,
                        "PA02",
                        f"PA02: replay limit reached: the request was replayed {front.max_replays} times "
                        f"and {instance} asked for another replay ({replay})",
                    )
                if len(request.body) > front.replay_body_limit:
                    raise refused(
                        "body-too-large",
                        502,
                        "replay-body-too-large",
                        f"request body too large to replay ({len(request.body)} bytes, "
                        f"limit {front.replay_body_limit}); {instance} asked for a replay ({replay})",
                    )
                targets = front._replay_targets(fields, instance)
                began = time.monotonic()
                src = f"instance={instance};region={front.region_of(instance)};t={time.time_ns() // 1000}"
                if state is not None:
                    src += f";state={state}"
                replayed = request.with_header("fly-replay-src", src)
                target = targets[0] if targets else fields.get("instance", "")
                failure: str | None
                if not targets or front._address(target) is None:
                    failure = "no_candidate"
                else:
                    failure = self._reach(target, _duration(fields.get("timeout")))
                if failure is None:
                    try:
                        delivered = self._send_first(replayed, [target], retry=False)
                    except _ProxyError as exc:
                        if exc.code != "unreachable":  # bytes reached it: never sent back, it may have run
                            raise
                        failure = "retries_exhausted"  # it went away between the probe and the replay
                    else:
                        front._record(dataclasses.replace(refused.event, to_instance=target))
                        response, conn, instance = delivered
                        continue
                if fields.get("fallback") not in ("force_self", "prefer_self"):
                    if failure == "no_candidate":
                        raise refused(
                            "no-target", 502, "replay-no-target", f"fly-replay names no known instance: {replay}"
                        )
                    raise refused("unreachable", 502, "replay-unreachable", f"{target} could not be reached: {failure}")
                front._record(dataclasses.replace(refused.event, refused=f"fallback-{failure}"))
                elapsed_ms = int((time.monotonic() - began) * 1000)
                failed = (
                    f"instance={target};app={front.app_name};region={front.region_of(instance)};"
                    f"replay_source={instance};reason={failure};elapsed_ms={elapsed_ms}"
                )
                sent_back = request.with_header("fly-replay-failed", failed)
                response, conn, instance = self._send_first(sent_back, [instance], retry=False)
                if response.getheader("fly-replay") is not None:
                    _discard(response, conn)
                    raise _ProxyError(
                        502, "replay-after-fallback", f"{instance} asked to replay a request sent back to it"
                    )
                break
        except _ProxyError as exc:
            self._error(exc)
            return
        front._served(instance)
        try:
            self._relay(response, instance)
        finally:
            conn.close()

    def _reach(self, instance: str, timeout: float | None) -> str | None:
        """None once *instance* accepts a connection; else why not (``timeout``, ``retries_exhausted``).

        Tried every 50 ms until *timeout*; without one, three times. The
        connection is only a probe: the replay opens its own.
        """
        front = self.server.owner
        deadline = None if timeout is None else time.monotonic() + timeout
        attempts = 0
        while True:
            address = front._address(instance)
            if address is None:
                return "no_candidate"
            try:
                socket.create_connection(address, timeout=_RECONNECT_EVERY * 4).close()
                return None
            except OSError:
                attempts += 1
            if deadline is None and attempts >= _ATTEMPTS_WITHOUT_TIMEOUT:
                return "retries_exhausted"
            if deadline is not None and time.monotonic() + _RECONNECT_EVERY > deadline:
                return "timeout"
            time.sleep(_RECONNECT_EVERY)

    def _send_first(
        self, request: _Request, candidates: list[str], *, retry: bool = True
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, str]:
        """Send *request* to the first candidate that accepts the connection."""
        front = self.server.owner
        if not candidates:
            raise _ProxyError(503, "no-instances", "no instances to send the request to")
        last_error: Exception | None = None
        for instance in candidates if retry else candidates[:1]:
            address = front._address(instance)
            if address is None:
                continue
            conn = http.client.HTTPConnection(address[0], address[1], timeout=_UPSTREAM_TIMEOUT)
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                last_error = exc
                logger.debug("front: %s refused the connection (%s)", instance, exc)
                continue
            try:
                conn.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
                for name, value in request.headers:
                    conn.putheader(name, value)
                conn.endheaders(request.body or None)
                return conn.getresponse(), conn, instance
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise _ProxyError(502, "upstream-failed", f"instance {instance} failed: {exc!r}") from exc
        raise _ProxyError(502, "unreachable", f"no instance accepted the connection ({last_error!r})")

    # -- response ------------------------------------------------------------

    def _relay(self, response: http.client.HTTPResponse, instance: str) -> None:
        no_body = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        length = response.getheader("Content-Length")
        chunked = not no_body and length is None
        if chunked and self.request_version != "HTTP/1.1":
            self.close_connection = True
        upstream_close = response.will_close and length is None and not chunked
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "fly-request-id":
                self.send_header(name, value)
        self._send_request_id()
        if chunked and not self.close_connection:
            self.send_header("Transfer-Encoding", "chunked")
        if upstream_close:
            self.close_connection = True
        self.end_headers()
        self.wfile.flush()
        if no_body:
            response.close()
            return
        framed = chunked and not self.close_connection
        try:
            while True:
                data = response.read1(_READ_SIZE)
                if not data:
                    break
                if framed:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                else:
                    self.wfile.write(data)
                self.wfile.flush()
            if framed:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except (OSError, http.client.HTTPException) as exc:
            logger.debug("front: relay from %s cut short: %r", instance, exc)
            self.close_connection = True

    def _send_request_id(self) -> None:
        # As Fly's edge does: a client can quote it, and a test can find the request's replays by it.
        if self._request_id is not None:
            self.send_header("Fly-Request-Id", self._request_id)

    def _error(self, exc: _ProxyError) -> None:
        logger.info("front: %s %s -> %d %s", self.command, self.path, exc.status, exc.message)
        body = f"devcluster front proxy: {exc.message}\n".encode()
        try:
            self.send_response_only(exc.status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("fly-devcluster-error", exc.code)
            self._send_request_id()
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True


class _Refusal:
    """Records a refused replay and makes the error response for it."""

    def __init__(self, front: FrontProxy, event: ReplayEvent) -> None:
        self.front = front
        self.event = event

    def __call__(self, reason: str, status: int, code: str, message: str) -> _ProxyError:
        self.front._record(dataclasses.replace(self.event, refused=reason))
        return _ProxyError(status, code, message)


def _health_status(address: tuple[str, int], path: str, timeout: float) -> int | None:
    """The status a health check gets (``GET path``); None when the instance does not answer."""
    conn = http.client.HTTPConnection(address[0], address[1], timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": f"{address[0]}:{address[1]}", "User-Agent": "devcluster-health"})
        response = conn.getresponse()
        response.read(65536)
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _duration(value: str | None) -> float | None:
    """Seconds in a Fly duration (``5s``, ``800ms``); None when absent or not one."""
    match = _DURATION.fullmatch(value.strip()) if value else None
    if match is None:
        return None
    return int(match[1]) / (1000 if match[2] == "ms" else 1)


def _discard(response: http.client.HTTPResponse, conn: http.client.HTTPConnection) -> None:
    """Drop a response that asked for a replay (and its connection)."""
    response.close()
    conn.close()


def iter_chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """Yield a response's body as it arrives (a helper for tests and tools)."""
    while True:
        data = response.read1(_READ_SIZE)
        if not data:
            return
        yield data
