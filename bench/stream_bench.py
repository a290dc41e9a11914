"""Push against poll, on real LiteFS: what following LiteFS's event stream changes.

    python bench/stream_bench.py           # ~6 minutes, writes bench/results/stream.md
    python bench/stream_bench.py --quick   # ~4 minutes: fewer commits, 1 failover, 1 wrk round x 2 s

Every variant in one run, on real LiteFS (v0.5.14, ``LiteFSCluster``), the
middleware with ``litefs_api_url=<the node's API>`` (**stream**) against the
same middleware with ``litefs_api_url="off"`` (**poll**: the mount read every
``cache_ttl`` = 1 s, ``<db>-pos`` every 1 ms while a read waits):

1. **Commit → read latency.** Two nodes (Consul lease, node1 primary); in
   this process, one middleware of each kind over node2's mount. Per round a
   thread waits in ``routing.positions.wait(txid, 10)`` for the next TXID (it
   is registered before the commit), then an ``INSERT`` commits on the
   primary's mount; the latency runs from ``commit`` returning to the waiter
   waking. Rounds of five kinds, interleaved: both waiters on the same commit,
   each alone, and each end to end over HTTP (a werkzeug server in this
   process, a ``GET`` with the ``__txid`` cookie, timed until its response).
2. **Mount reads per second** (``cache.reads + positions.reads + subscriber.reads``): nothing
   served (idle), a loop of in-process ``GET`` calls, and the same ``GET``s
   carrying the ``__txid`` of a writer committing on the primary every 10 ms.
3. **Failover and handoff.** A 3-node Consul-lease cluster; a stream and a
   poll middleware on each of node2 and node3, each sent a ``POST`` every
   ~5 ms by a few threads. Per round: node1's LiteFS is killed (its lease
   expires after Consul's 3 s TTL; node2 or node3 takes it), then node1 is
   restarted and handed the lease back (``POST /promote``). Measured per
   middleware: from the kill / the promote, from the new primary holding the
   lease and from the middleware's own node's LiteFS knowing it (its ``/info``,
   polled every few ms) to its first write decided for the new primary
   (``409`` + ``fly-replay: instance=<new>``, or run locally on the new
   primary itself); and the decisions still made for the old primary after
   the node's LiteFS had dropped it (stale).
4. **Throughput of a primary GET**: ``bench/run.py``'s servers (uvicorn +
   Starlette, gunicorn sync + Flask, the ``route`` variant) on node1's
   mount (the primary) of the same two nodes, ``LITEFS_API_URL`` = the
   node's API or ``off``, wrk as in ``bench/run.py``, interleaved rounds; with
   the mount reads the server made during each measured run (``/__reads``).

The report (Markdown) is printed and written to ``bench/results/stream.md``.
Needs root (FUSE), ``fusermount3`` and the ``litefs`` binary
(``.ci/install-litefs``); installs ``wrk`` with apt-get if missing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import io
import itertools
import logging
import math
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench.instructions import Where  # noqa: E402
from bench.instructions import count as count_instructions  # noqa: E402
from bench.litefs_side_by_side import source  # noqa: E402
from bench.run import (  # noqa: E402
    STACKS,
    Server,
    WrkConfig,
    WrkResult,
    ensure_tool,
    http_request,
    log,
    log_cell,
    machine,
    measure,
    med,
    rotated,
    versions,
    warm_up,
)
from litefs_route._consistency import PositionWatcher  # noqa: E402
from litefs_route.wsgi import PrimaryRoutingMiddleware  # noqa: E402
from litefs_route_devcluster.litefs import LITEFS_VERSION, LiteFSCluster, LiteFSNode, litefs_unavailable  # noqa: E402

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import WSGIEnvironment

DATABASE = "app.db"
VARIANTS = ("stream", "poll")
LABEL = {"stream": "stream (`litefs_api_url=<node API>`)", "poll": 'poll (`litefs_api_url="off"`, `cache_ttl=1`)'}
SECTIONS = ("latency", "reads", "failover", "throughput", "instructions")


# -- in-process WSGI calls ------------------------------------------------------------


def hello(environ: WSGIEnvironment, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ran"]


def make_environ(method: str, cookie: str | None = None) -> WSGIEnvironment:
    environ: WSGIEnvironment = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if method == "POST":
        environ["CONTENT_LENGTH"] = "0"
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    return environ


class _StartResponse:
    __slots__ = ("headers", "status")

    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        self.status, self.headers = status, headers
        return lambda data: None


def call(middleware: PrimaryRoutingMiddleware, environ: WSGIEnvironment) -> tuple[int, dict[str, str]]:
    """One request through the middleware, in this thread: (status, headers)."""
    start = _StartResponse()
    body = middleware(dict(environ, **{"wsgi.input": io.BytesIO(b"")}), start)
    b"".join(body)
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return int(start.status.split()[0]), {k.lower(): v for k, v in start.headers}


def write_outcome(middleware: PrimaryRoutingMiddleware) -> str:
    """A POST's fate: ``ran`` (this node is primary), ``replay:<id>``, or the status code."""
    status, headers = call(middleware, make_environ("POST"))
    if status == 200:
        return "ran"
    if status == 409 and "fly-replay" in headers:
        return "replay:" + headers["fly-replay"].split(";")[0].removeprefix("instance=")
    return str(status)


def mount_reads(middleware: PrimaryRoutingMiddleware) -> int:
    routing = middleware.routing
    return routing.cache.reads + (routing.positions.reads if routing.positions is not None else 0)


def build(node: LiteFSNode, variant: str, *, database: str | None = DATABASE) -> PrimaryRoutingMiddleware:
    """The middleware over *node*'s mount."""
    return PrimaryRoutingMiddleware(
        hello,
        litefs_dir=node.mount_dir,
        instance_id=node.id,
        database=database,
        cache_ttl=1.0,
        litefs_api_url=node.api_url if variant == "stream" else "off",
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0, interval: float = 0.0002) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def stream_up(middleware: PrimaryRoutingMiddleware, what: str) -> None:
    """Start the stream (the first read of the mount does) and wait until it is trusted."""
    subscriber = middleware.routing.subscriber
    if subscriber is None:
        raise RuntimeError(f"{what}: routing.subscriber is None although litefs_api_url was given")
    middleware.routing.cache.get()
    wait_for(lambda: subscriber.up, f"{what}: the event stream to come up (subscriber.up)")
    if middleware.routing.positions is not None:
        watcher = _positions(middleware)
        wait_for(lambda: watcher.pushed, f"{what}: positions.pushed")


def pct(values: Sequence[float], p: float) -> float:
    """The nearest-rank *p*-th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# -- the primary's writer ----------------------------------------------------------------


class Writer:
    """One connection to the database on the primary's mount; every INSERT is one LiteFS transaction."""

    def __init__(self, cluster: LiteFSCluster, node: str) -> None:
        self.cluster, self.node = cluster, node
        self.db = sqlite3.connect(cluster.db_path(node), isolation_level=None, check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        self.txid = self.position()

    def position(self) -> int:
        txid = self.cluster.position(self.node)
        if txid is None:
            raise RuntimeError(f"{self.node} has no position for {DATABASE}")
        return txid

    def commit(self) -> float:
        """INSERT (autocommit) and the time right after it returned; self.txid is the TXID it made."""
        self.db.execute("INSERT INTO t (v) VALUES ('x')")
        done = time.perf_counter()
        self.txid += 1
        return done

    def close(self) -> None:
        self.db.close()


# -- section 1: commit -> read latency --------------------------------------------------------

LATENCY_KINDS = ("both", "stream", "poll", "http-stream", "http-poll")


@dataclass
class LatencyResult:
    #: (kind, variant) -> ms from the commit returning to the waiter waking.
    ms: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    commit_ms: list[float] = field(default_factory=list)
    #: Rounds of kind "both": poll's ms minus stream's ms, the same commit.
    paired: list[float] = field(default_factory=list)
    #: Waiters that woke before execute() returned on the primary (negative ms).
    early: int = 0
    failures: list[str] = field(default_factory=list)
    #: variant -> (cache.reads, positions.reads) made during the section.
    reads: dict[str, tuple[int, int]] = field(default_factory=dict)
    stream_connections: int = 0


class HTTPFront:
    """A werkzeug threaded server in this process, in front of one middleware."""

    def __init__(self, middleware: PrimaryRoutingMiddleware) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, middleware, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def get(self, cookie: str) -> tuple[float, int, str | None]:
        """GET / with *cookie*: (time the whole response had arrived, status, Fly-Instance)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            conn.request("GET", "/", headers={"Cookie": cookie})
            response = conn.getresponse()
            response.read()
            return time.perf_counter(), response.status, response.getheader("fly-instance")
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


def latency(cluster: LiteFSCluster, mws: dict[str, PrimaryRoutingMiddleware], commits: int) -> LatencyResult:
    result = LatencyResult()
    writer = Writer(cluster, "node1")
    cluster.wait_replicated()
    fronts = {variant: HTTPFront(mws[variant]) for variant in VARIANTS}
    before = {v: (mws[v].routing.cache.reads, _positions(mws[v]).reads) for v in VARIANTS}
    try:
        for i in range(commits):
            for kind in rotated(LATENCY_KINDS, i):
                one_latency_round(kind, writer, mws, fronts, result)
                time.sleep(0.005)
            if (i + 1) % max(1, commits // 5) == 0:
                log(f"latency: {i + 1}/{commits} rounds of {len(LATENCY_KINDS)} commits")
    finally:
        for front in fronts.values():
            front.close()
        writer.close()
    result.reads = {
        v: (mws[v].routing.cache.reads - before[v][0], _positions(mws[v]).reads - before[v][1]) for v in VARIANTS
    }
    subscriber = mws["stream"].routing.subscriber
    assert subscriber is not None
    result.stream_connections = subscriber.connections
    if not subscriber.up:
        result.failures.append("the stream was down at the end of the latency section")
    return result


def _positions(middleware: PrimaryRoutingMiddleware) -> PositionWatcher:
    """The read-your-writes watcher of DATABASE."""
    positions = middleware.routing.positions
    if positions is None:
        raise RuntimeError("routing.positions is None although database= was given")
    return next(w for w in positions.watchers if w.database == DATABASE)


def waiting(positions: PositionWatcher) -> Callable[[], bool]:
    return lambda: positions.waiting == 1


def one_latency_round(
    kind: str,
    writer: Writer,
    mws: dict[str, PrimaryRoutingMiddleware],
    fronts: dict[str, HTTPFront],
    result: LatencyResult,
) -> None:
    target = writer.txid + 1
    variants = VARIANTS if kind == "both" else (kind.removeprefix("http-"),)
    woke: dict[str, tuple[float, bool, str]] = {}

    def wait_in_process(variant: str) -> None:
        ok = _positions(mws[variant]).wait(target, 10)
        woke[variant] = (time.perf_counter(), ok, "")

    def wait_over_http(variant: str) -> None:
        done, status, instance = fronts[variant].get(f"__txid={target:016x}")
        ok = status == 200 and instance == "node2"
        woke[variant] = (done, ok, "" if ok else f"HTTP {status}, Fly-Instance {instance}")

    waiter = wait_over_http if kind.startswith("http-") else wait_in_process
    threads = [threading.Thread(target=waiter, args=(v,)) for v in variants]
    for thread in threads:
        thread.start()
    for variant in variants:
        wait_for(waiting(_positions(mws[variant])), f"the {kind} {variant} reader to wait for TXID {target}")
    began = time.perf_counter()
    committed = writer.commit()
    for thread in threads:
        thread.join(15)
    result.commit_ms.append((committed - began) * 1000)
    for variant in variants:
        if variant not in woke:
            result.failures.append(f"{kind} {variant}: the reader of TXID {target} never returned")
            continue
        at, ok, why = woke[variant]
        if not ok:
            result.failures.append(f"{kind} {variant}: TXID {target} not reached ({why or 'wait() returned False'})")
            continue
        result.ms.setdefault((kind, variant), []).append((at - committed) * 1000)
        result.early += at < committed
    if kind == "both" and all(v in woke and woke[v][1] for v in VARIANTS):
        result.paired.append((woke["poll"][0] - woke["stream"][0]) * 1000)
    if writer.position() != target:  # one INSERT is one transaction: resynchronise and say so if not
        result.failures.append(f"{kind}: the primary is at TXID {writer.position()}, expected {target}")
        writer.txid = writer.position()


# -- section 2: mount reads per second ---------------------------------------------------------


@dataclass
class ReadsRow:
    load: str
    variant: str
    seconds: float = 0.0
    requests: int = 0
    cache_reads: int = 0
    position_reads: int = 0
    #: The subscriber thread's own reads (its checks of the stream against the mount).
    check_reads: int = 0
    #: Reads answered 409 (their TXID did not arrive within consistency_wait); with a cookie only.
    replayed: int = 0
    #: req/s of each slice (the variants alternate in slices).
    slice_rps: list[float] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return (self.cache_reads + self.position_reads + self.check_reads) / self.seconds

    @property
    def rps(self) -> float:
        return med(self.slice_rps) if self.slice_rps else 0.0


def _counters(middleware: PrimaryRoutingMiddleware) -> tuple[int, int, int]:
    """Mount reads so far: the cache's, the TXID watcher's, the event subscriber's own checks."""
    routing = middleware.routing
    checks = routing.subscriber.reads if routing.subscriber is not None else 0
    return routing.cache.reads, _positions(middleware).reads, checks


#: The loaded rows alternate the two variants in this many slices each (order rotated), req/s the median slice.
READS_SLICES = 5
RYW_LOAD = "GET loop with the `__txid` of a writer committing every 10 ms on the primary"
GET_LOAD = "GET loop, no cookie (one thread, in-process)"


def reads(cluster: LiteFSCluster, mws: dict[str, PrimaryRoutingMiddleware], seconds: float) -> list[ReadsRow]:
    rows: list[ReadsRow] = []
    # Idle: both middlewares at once (neither is called).
    before = {v: _counters(mws[v]) for v in VARIANTS}
    t0 = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - t0
    for v in VARIANTS:
        (c0, p0, k0), (c1, p1, k1) = before[v], _counters(mws[v])
        rows.append(ReadsRow("idle: no request at all", v, elapsed, 0, c1 - c0, p1 - p0, k1 - k0))
        log(f"reads idle {v}: {c1 - c0} + {p1 - p0} + {k1 - k0} in {elapsed:.1f} s")
    rows += load_rows(GET_LOAD, mws, seconds, None)
    writer = Writer(cluster, "node1")
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            writer.commit()
            time.sleep(0.01)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        rows += load_rows(RYW_LOAD, mws, seconds, writer)
    finally:
        stop.set()
        thread.join()
        writer.close()
    return rows


def load_rows(
    load: str, mws: dict[str, PrimaryRoutingMiddleware], seconds: float, writer: Writer | None
) -> list[ReadsRow]:
    """*seconds* of GETs per variant, alternating in slices; with *writer*, each carries its newest TXID."""
    rows = {v: ReadsRow(load, v) for v in VARIANTS}
    for i in range(READS_SLICES):
        for variant in rotated(VARIANTS, i):
            one_slice(mws[variant], rows[variant], seconds / READS_SLICES, writer)
    for row in rows.values():
        reads = f"{row.cache_reads} + {row.position_reads} + {row.check_reads} reads"
        log(f"reads {load[:40]} {row.variant}: {row.rps:,.0f} req/s, {reads}")
    return list(rows.values())


def one_slice(middleware: PrimaryRoutingMiddleware, row: ReadsRow, seconds: float, writer: Writer | None) -> None:
    plain = make_environ("GET")
    (c0, p0, k0), n = _counters(middleware), 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for _ in range(10):
            environ = plain if writer is None else make_environ("GET", f"__txid={writer.txid:016x}")
            status, headers = call(middleware, environ)
            if status == 409 and writer is not None:
                row.replayed += 1
            elif status != 200 or headers.get("fly-instance") != "node2":
                raise RuntimeError(f"GET answered {status} {headers}")
        n += 10
    elapsed = time.perf_counter() - t0
    c1, p1, k1 = _counters(middleware)
    row.seconds += elapsed
    row.requests += n
    row.cache_reads += c1 - c0
    row.position_reads += p1 - p0
    row.check_reads += k1 - k0
    row.slice_rps.append(n / elapsed)


# -- section 3: failover and handoff --------------------------------------------------------


@dataclass(frozen=True)
class Decided:
    sent: float
    done: float
    outcome: str  # "ran", "replay:<id>", or a status code


class WriteLoop:
    """*threads* threads, each sending a POST through *middleware* then sleeping *period* (staggered)."""

    def __init__(self, middleware: PrimaryRoutingMiddleware, threads: int, period: float) -> None:
        self.middleware, self.period = middleware, period
        self.records: list[Decided] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i * period / threads,)) for i in range(threads)]

    def _run(self, offset: float) -> None:
        time.sleep(offset)
        while not self._stop.is_set():
            sent = time.perf_counter()
            outcome = write_outcome(self.middleware)
            self.records.append(Decided(sent, time.perf_counter(), outcome))
            time.sleep(self.period)

    def start(self) -> WriteLoop:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)  # a write waiting for a primary returns within primary_wait (5 s)

    def first(self, outcome: str, after: float) -> float | None:
        return min((r.done for r in self.records if r.outcome == outcome and r.done >= after), default=None)


@dataclass(frozen=True)
class Info:
    at: float  # when the answer had arrived
    node: str
    is_primary: bool
    primary: str | None  # the primary it names (None: none known, or itself)


class InfoMonitor:
    """Polls each node's ``GET /info`` in a loop: when each node's LiteFS held the lease and whom it named."""

    def __init__(self, cluster: LiteFSCluster, nodes: Sequence[str], interval: float = 0.002) -> None:
        self.cluster, self.nodes, self.interval = cluster, list(nodes), interval
        self.samples: list[Info] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for node in self.nodes:
                try:
                    info = self.cluster.info(node, timeout=0.5)
                except (OSError, ValueError):
                    continue
                primary = (info.get("primary") or {}).get("hostname") or None
                self.samples.append(Info(time.perf_counter(), node, bool(info.get("isPrimary")), primary))
            time.sleep(self.interval)

    def __enter__(self) -> InfoMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def first(self, node: str, condition: Callable[[Info], bool], after: float) -> float | None:
        return next((s.at for s in self.samples if s.node == node and s.at >= after and condition(s)), None)

    def holder(self, after: float, exclude: str) -> tuple[str, float] | None:
        """The first node but *exclude* seen holding the lease after *after*, and when."""
        return next(
            ((s.node, s.at) for s in self.samples if s.at >= after and s.is_primary and s.node != exclude), None
        )

    def period_ms(self) -> float:
        per_node = [s.at for s in self.samples if s.node == self.nodes[0]]
        gaps = [b - a for a, b in itertools.pairwise(per_node)]
        return statistics.median(gaps) * 1000 if gaps else math.nan


@dataclass(frozen=True)
class MoveRow:
    event: str  # "failover" (node1 killed) or "handoff" (the lease promoted back to node1)
    round: int
    node: str
    role: str
    variant: str
    old: str
    new: str
    #: ms from the kill / the promote call to the middleware's first write decided for the new primary.
    from_event: float | None
    #: ms from the new primary being seen holding the lease (its /info) to that write.
    from_lease: float | None
    #: ms from this node's LiteFS being seen to know the new primary (its /info) to that write.
    from_node: float | None
    #: Changes of this node's /info (role, primary) from the event until the middleware routed.
    views: int
    #: Writes still decided for the old primary after this node's LiteFS had dropped it for good, and the last one's ms.
    stale: int
    stale_last: float | None
    unavailable: int  # 503s (no primary within primary_wait)


def _ms(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else (later - earlier) * 1000


def view_changes(
    monitor: InfoMonitor, node: str, old: str, after: float, until: float | None
) -> tuple[int, float | None]:
    """How often *node*'s /info changed between *after* and *until*, and when it dropped *old* for good.

    A replica's LiteFS may name the old primary again after dropping it (it
    reconnects to the lease holder Consul still names), so "dropped" is the
    first sample after the last one that named it (or, for the old primary
    itself, said it was primary).
    """
    samples = [s for s in monitor.samples if s.node == node and s.at >= after]
    views = [(s.is_primary, s.primary) for s in samples if until is None or s.at <= until]
    changes = sum(a != b for a, b in itertools.pairwise(views))
    named = [i for i, s in enumerate(samples) if (s.is_primary if node == old else s.primary == old)]
    if not samples:
        return changes, None
    if not named:
        return changes, samples[0].at
    last = named[-1]
    return changes, samples[last + 1].at if last + 1 < len(samples) else None


def move_rows(
    event: str,
    r: int,
    loops: dict[tuple[str, str], WriteLoop],
    monitor: InfoMonitor,
    t_event: float,
    old: str,
    new: str,
    t_lease: float,
) -> list[MoveRow]:
    rows = []
    for (node, variant), loop in loops.items():
        new_outcome = "ran" if node == new else f"replay:{new}"
        old_outcome = "ran" if node == old else f"replay:{old}"
        first = loop.first(new_outcome, t_event)
        if node == new:
            knows = monitor.first(node, lambda s: s.is_primary, t_event)
        else:
            knows = monitor.first(node, lambda s: s.primary == new and not s.is_primary, t_event)
        views, dropped = view_changes(monitor, node, old, t_event, first)
        stale = [d for d in loop.records if d.outcome == old_outcome and dropped is not None and d.done > dropped]
        if event == "failover":
            role = "new primary (runs the write)" if node == new else "replica (replays to the new primary)"
        else:
            role = "demoted primary (replays)" if node == old else "other replica (replays)"
        rows.append(
            MoveRow(
                event,
                r,
                node,
                role,
                variant,
                old,
                new,
                _ms(first, t_event),
                _ms(first, t_lease),
                _ms(first, knows),
                views,
                len(stale),
                _ms(max((d.done for d in stale), default=None), dropped),
                sum(d.outcome == "503" for d in loop.records if d.done >= t_event),
            )
        )
    return rows


def routes(middleware: PrimaryRoutingMiddleware, expected: str) -> Callable[[], bool]:
    return lambda: write_outcome(middleware) == expected


Middlewares = dict[tuple[str, str], PrimaryRoutingMiddleware]


def all_routed(loops: dict[tuple[str, str], WriteLoop], new: str, after: float) -> Callable[[], bool]:
    """True once every loop has had a write decided for *new* (run there, or replayed to it)."""

    def check() -> bool:
        return all(
            loop.first("ran" if node == new else f"replay:{new}", after) is not None
            for (node, _), loop in loops.items()
        )

    return check


def new_holder(monitor: InfoMonitor, after: float, old: str) -> Callable[[], bool]:
    return lambda: monitor.holder(after, exclude=old) is not None


def move(
    event: str,
    r: int,
    cluster: LiteFSCluster,
    mws: Middlewares,
    watch: Sequence[str],
    action: Callable[[], None],
    old: str,
    threads: int,
    period: float,
) -> tuple[list[MoveRow], str, float, float]:
    """Writes flowing through every middleware, *action* moves the lease away from *old*: rows, new, ms, period."""
    loops = {key: WriteLoop(mw, threads, period).start() for key, mw in mws.items()}
    try:
        with InfoMonitor(cluster, watch) as monitor:
            time.sleep(0.2)
            t_event = time.perf_counter()
            action()
            wait_for(new_holder(monitor, t_event, old), "a new primary", 30, 0.005)
            holder = monitor.holder(t_event, exclude=old)
            assert holder is not None
            new, t_lease = holder
            wait_for(all_routed(loops, new, t_event), f"every middleware to route to {new}", 30, 0.005)
            time.sleep(0.2)
    finally:
        for loop in loops.values():
            loop.stop()
    rows = move_rows(event, r, loops, monitor, t_event, old, new, t_lease)
    return rows, new, (t_lease - t_event) * 1000, monitor.period_ms()


def failover(rounds: int, threads: int, period: float) -> tuple[list[MoveRow], list[str], float]:
    """Kill node1 (Consul lease), measure, restart it and promote it back, measure; *rounds* times."""
    rows: list[MoveRow] = []
    notes: list[str] = []
    periods: list[float] = []
    with contextlib.closing(LiteFSCluster(instances=3, lease="consul", database=DATABASE)) as cluster:
        cluster.start()
        Writer(cluster, "node1").close()  # the database exists (and replicated) before the first kill
        cluster.wait_replicated()
        survivors = ["node2", "node3"]
        mws = {(n, v): build(cluster.nodes[n], v, database=None) for n in survivors for v in VARIANTS}
        for (node, variant), mw in mws.items():
            if variant == "stream":
                stream_up(mw, f"{node} stream")
        log(f"failover: Consul lease (TTL {cluster.consul_ttl:g} s, lock delay {cluster.consul_lock_delay:g} s)")
        for r in range(1, rounds + 1):
            for (node, variant), mw in mws.items():
                wait_for(routes(mw, "replay:node1"), f"{node} {variant} to route to node1", 15, 0.01)
            # The failover: node1's LiteFS killed; its lease expires, a survivor takes it.
            kill = functools.partial(cluster.kill_node, "node1")
            moved, new, ms, monitor_ms = move("failover", r, cluster, mws, survivors, kill, "node1", threads, period)
            rows += moved
            periods.append(monitor_ms)
            log(f"failover {r}/{rounds}: {new} was seen holding the lease {ms:.0f} ms after the kill")
            # The handoff: node1 restarted (a replica), then handed the lease (LiteFS's POST /promote).
            cluster.start_node("node1")
            cluster.wait_replicated(30)
            promote = functools.partial(cluster.promote, "node1")
            moved, back, ms, monitor_ms = move(
                "handoff", r, cluster, mws, ["node1", *survivors], promote, new, threads, period
            )
            if back != "node1":
                raise RuntimeError(f"the handoff went to {back}, not node1")
            rows += moved
            periods.append(monitor_ms)
            log(f"handoff {r}/{rounds}: node1 was seen holding the lease {ms:.0f} ms after the promote call")
        for (node, variant), mw in mws.items():
            subscriber = mw.routing.subscriber
            if variant == "stream" and subscriber is not None and (not subscriber.up or subscriber.connections != 1):
                notes.append(f"{node} stream: up={subscriber.up}, connections={subscriber.connections}")
    return rows, notes, statistics.median(periods) if periods else math.nan


# -- section 4: throughput of a primary GET ---------------------------------------------------


@dataclass(frozen=True)
class TputSample:
    wrk: WrkResult
    reads: int  # mount reads the server made during the measured run
    seconds: float


def throughput(cfg: WrkConfig, node: LiteFSNode) -> dict[tuple[str, str], list[TputSample]]:
    results: dict[tuple[str, str], list[TputSample]] = {}
    for r in range(cfg.rounds):
        for stack in STACKS:
            for variant in rotated(VARIANTS, r):
                env = {"LITEFS_API_URL": node.api_url if variant == "stream" else "off"}
                server = Server(stack, "route", Path(node.mount_dir), cfg.server_cpu, machine_id=node.id, extra_env=env)
                with server.running():
                    url = f"http://127.0.0.1:{server.port}/"
                    status, headers, body = http_request(server.port, "GET")
                    if (status, body, headers.get("fly-instance"), headers.get("fly-primary-instance")) != (
                        200,
                        b"Hello, world!",
                        node.id,
                        node.id,
                    ):
                        raise RuntimeError(f"{stack} {variant}: unexpected primary GET {status} {headers} {body!r}")
                    warm_up(cfg, url, "GET", stack)
                    reads0, t0 = server.reads(), time.perf_counter()
                    res = measure(cfg, url, "GET", stack)
                    reads1, t1 = server.reads(), time.perf_counter()
                results.setdefault((stack, variant), []).append(TputSample(res, reads1 - reads0, t1 - t0))
                log_cell(f"round {r + 1}/{cfg.rounds} {stack} {variant:6} primary GET ({reads1 - reads0} reads)", res)
    return results


@contextlib.contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the duration (bench/instructions.py's servers inherit os.environ)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


def instructions(node: LiteFSNode, n: int, warmup: int) -> dict[tuple[str, str], float]:
    """Instructions per primary GET (callgrind, bench/instructions.py's method), stream against poll."""
    ensure_tool("valgrind")
    counted: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="stream-callgrind-") as tmp:
        for stack in STACKS:
            for variant in VARIANTS:
                # One cell at a time: the API URL reaches the server through os.environ.
                with environment("LITEFS_API_URL", node.api_url if variant == "stream" else "off"):
                    per_request = count_instructions(
                        stack, "route", Path(node.mount_dir), "GET", n, warmup, Path(tmp), Where(machine_id=node.id)
                    )
                counted[(stack, variant)] = per_request
                log(f"instructions {stack} {variant} primary GET: {per_request:,.0f} per request")
    return counted


# -- the report -----------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def spread(values: Iterable[float | None], digits: int = 0) -> str:
    """median (min to max) of the values that are known; '—' if none."""
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    if len(known) == 1:
        return fmt(known[0], digits)
    return f"{fmt(med(known), digits)} ({fmt(min(known), digits)} to {fmt(max(known), digits)})"


@dataclass
class Results:
    lat: LatencyResult | None = None
    reads: list[ReadsRow] = field(default_factory=list)
    moves: list[MoveRow] = field(default_factory=list)
    move_notes: list[str] = field(default_factory=list)
    monitor_ms: float = math.nan
    tput: dict[tuple[str, str], list[TputSample]] = field(default_factory=dict)
    instr: dict[tuple[str, str], float] = field(default_factory=dict)


def latency_label(kind: str) -> str:
    return {
        "both": "in-process, both waiting on the same commit",
        "stream": "in-process, alone",
        "poll": "in-process, alone",
        "http-stream": "over HTTP (`__txid` cookie), alone",
        "http-poll": "over HTTP (`__txid` cookie), alone",
    }[kind]


def summary(res: Results) -> list[str]:
    out = [
        "| measure | stream | poll | stream vs poll |",
        "|---|---:|---:|---|",
    ]
    if res.lat is not None:
        for kinds, what in (
            (("both", "both"), "commit → waiting read wakes, in-process, same commit: median / p99 ms"),
            (("http-stream", "http-poll"), "commit → read's response, over HTTP with `__txid`: median / p99 ms"),
        ):
            cells = []
            for kind, variant in zip(kinds, VARIANTS, strict=True):
                ms = res.lat.ms.get((kind, variant), [])
                cells.append(f"{med(ms):.2f} / {pct(ms, 99):.2f}" if ms else "—")
            s_ms = res.lat.ms.get((kinds[0], "stream"), [])
            p_ms = res.lat.ms.get((kinds[1], "poll"), [])
            verdict = f"stream {med(s_ms) - med(p_ms):+.2f} ms (median)" if s_ms and p_ms else ""
            out.append(f"| {what} | {cells[0]} | {cells[1]} | {verdict} |")
        if res.lat.paired:
            d = res.lat.paired
            out.append(
                f"| same commit, poll's wake minus stream's: median / p99 ms | | | {med(d):.2f} / {pct(d, 99):.2f}; "
                f"stream first in {sum(x > 0 for x in d)}/{len(d)} |"
            )
    by = {(row.load, row.variant): row for row in res.reads}
    for load in dict.fromkeys(row.load for row in res.reads):
        s, p = by.get((load, "stream")), by.get((load, "poll"))
        if s is None or p is None:
            continue
        short = load.split(":")[0] if load.startswith("idle") else load
        out.append(f"| mount reads/s, {short} | {s.per_s:.2f} | {p.per_s:.2f} | |")
        if s.requests and p.requests:
            out.append(
                f"| in-process req/s, {short} (median of {READS_SLICES} slices) | {s.rps:,.0f} | {p.rps:,.0f} | "
                f"{s.rps / p.rps:.1%} of poll |"
            )
    groups = (
        ("failover", "replica"),
        ("failover", "new primary"),
        ("handoff", "demoted primary"),
        ("handoff", "other replica"),
    )
    for event, role_kw in groups:
        for metric, what in (
            ("from_event", "kill → first routed write" if event == "failover" else "promote → first routed write"),
            ("from_lease", "new primary holds the lease → first routed write"),
            ("from_node", "the node's LiteFS knows → first routed write"),
        ):
            cells = []
            for variant in VARIANTS:
                rows = [m for m in res.moves if m.event == event and m.variant == variant and role_kw in m.role]
                cells.append(spread((getattr(m, metric) for m in rows), 0))
            if all(c == "—" for c in cells):
                continue
            who = f"{event}, {role_kw}"
            out.append(f"| {who}: {what}, ms median (min to max) | {cells[0]} | {cells[1]} | |")
        stale = []
        for variant in VARIANTS:
            rows = [m for m in res.moves if m.event == event and m.variant == variant and role_kw in m.role]
            if rows:
                last = max((m.stale_last for m in rows if m.stale_last is not None), default=None)
                text = f"{sum(m.stale for m in rows)} in {len(rows)} node-rounds"
                stale.append(text if last is None else f"{text}, the last {last:,.0f} ms after")
        if len(stale) == 2:
            out.append(
                f"| {event}, {role_kw}: writes still decided for the old primary after the node's LiteFS "
                f"had dropped it | {stale[0]} | {stale[1]} | |"
            )
    for stack in STACKS:
        s_rows, p_rows = res.tput.get((stack, "stream"), []), res.tput.get((stack, "poll"), [])
        if s_rows and p_rows:
            s_rps, p_rps = med([x.wrk.rps for x in s_rows]), med([x.wrk.rps for x in p_rows])
            out.append(
                f"| {stack} primary GET, wrk req/s (median of {len(s_rows)}) | {s_rps:,.0f} | {p_rps:,.0f} | "
                f"{s_rps / p_rps:.1%} of poll |"
            )
        if (stack, "stream") in res.instr and (stack, "poll") in res.instr:
            s_i, p_i = res.instr[(stack, "stream")], res.instr[(stack, "poll")]
            out.append(
                f"| {stack} primary GET, instructions per request (valgrind) | {s_i:,.0f} | {p_i:,.0f} | "
                f"{s_i - p_i:+,.0f} ({p_i / s_i:.1%} of poll's throughput) |"
            )
    return out


def report(res: Results, args: argparse.Namespace, cfg: WrkConfig, elapsed: float, command: str) -> str:
    out = [
        "# litefs-route: LiteFS's event stream (push) against reading the mount (poll), on real LiteFS",
        "",
        f"Command: `{command}`.  ",
        f"Machine: {machine()}.  ",
        f"Software: {versions()}, LiteFS {LITEFS_VERSION}; {source()}.  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M %Z')}, wall time {elapsed / 60:.1f} min. The machine may be shared "
        "with other work.",
        "",
        "**stream**: `litefs_api_url=<the node's LiteFS API>`; **poll**: `litefs_api_url=\"off\"` (the mount's "
        "`.primary`/`.lag` read every `cache_ttl` = 1 s, `<db>-pos` every 1 ms while a read waits). Everything else "
        "is the default. Each stream middleware's `routing.subscriber.up` was waited for before measuring.",
        "",
        "## Summary",
        "",
        *summary(res),
        "",
    ]
    if res.lat is not None:
        lat = res.lat
        out += [
            "## 1. Commit on the primary → a read waiting for that TXID on the replica wakes",
            "",
            "Two nodes, Consul lease, node1 primary, node2 replica; a stream and a poll WSGI middleware over "
            f'node2\'s mount (`database="{DATABASE}"`) in this process. {args.commits} rounds of each kind, kinds '
            "interleaved (order rotated each round). The waiter (`routing.positions.wait(txid, 10)`, or a `GET` with "
            "`Cookie: __txid=<txid>` through a werkzeug server in this process) is registered before the "
            "`INSERT` (autocommit, one LiteFS transaction) runs on node1's mount; the time runs from `execute()` "
            f"returning (the commit itself took {med(lat.commit_ms):.2f} ms, median; {lat.early} waiters woke "
            "before it returned: negative ms, LiteFS had shipped the transaction before SQLite's `execute()` came "
            "back).",
            "",
            "| kind | variant | n | median ms | p90 ms | p99 ms | max ms |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for kind in LATENCY_KINDS:
            for variant in VARIANTS:
                ms = lat.ms.get((kind, variant))
                if ms:
                    out.append(
                        f"| {latency_label(kind)} | {variant} | {len(ms)} | {med(ms):.2f} | {pct(ms, 90):.2f} | "
                        f"{pct(ms, 99):.2f} | {max(ms):.2f} |"
                    )
        out += [
            "",
            "Mount reads during the section: "
            + "; ".join(f"{v}: `.primary`/`.lag` {c}, `{DATABASE}-pos` {p}" for v, (c, p) in lat.reads.items())
            + f". Stream connections: {lat.stream_connections}.",
            "",
        ]
        if lat.paired:
            out += [
                f"Paired, same commit (kind *both*, {len(lat.paired)} commits): poll woke {med(lat.paired):.2f} ms "
                f"after stream (median; p10 {pct(lat.paired, 10):.2f}, p90 {pct(lat.paired, 90):.2f}, p99 "
                f"{pct(lat.paired, 99):.2f} ms); stream woke first in "
                f"{sum(d > 0 for d in lat.paired)} of {len(lat.paired)}.",
                "",
            ]
        if lat.failures:
            out += ["Failures:", "", *[f"* {f}" for f in lat.failures], ""]
    if res.reads:
        out += [
            "## 2. Mount reads per second (`cache.reads + positions.reads + subscriber.reads`)",
            "",
            f"The same two middlewares on node2's mount, {args.reads_seconds:g} s per row, in-process WSGI calls "
            f"from one thread (a prebuilt environ); under load the two variants alternate in {READS_SLICES} slices "
            "each (req/s: the median slice). Reads are made by requests only: a process serving nothing reads "
            "nothing, polling or not.",
            "",
            "| load | variant | req/s | `.primary`+`.lag` reads | `-pos` reads | stream checks | reads/s "
            "| reads replayed (409) |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in res.reads:
            out.append(
                f"| {row.load} | {row.variant} | {row.rps:,.0f} | {row.cache_reads} | "
                f"{row.position_reads} | {row.check_reads} | {row.per_s:.2f} | {row.replayed} |"
            )
        out.append("")
    if res.moves:
        out += [
            "## 3. Failover (node1's LiteFS killed) and handoff (node1 promoted back)",
            "",
            f"Consul lease (TTL 3 s, lock delay 0.5 s), 3 nodes. A stream and a poll WSGI middleware on node2 and "
            f"on node3 (`cache_ttl=1`, `primary_wait=5`), each sent a `POST` every {args.write_period * 1000:g} ms "
            f"by {args.write_threads} threads. Each node's `/info` polled every ~{fmt(res.monitor_ms)} ms (median) "
            "to see when the new primary held the lease and when each node's LiteFS knew it. A *routed* write is "
            "the first decided for the new primary: `409` + `fly-replay: instance=<new>` on a replica, run locally "
            "on the new primary. *Stale*: decided for the old primary after the node's LiteFS had dropped it "
            "(replayed to a dead node after a failover; on a handoff, run locally by the demoted primary or "
            "replayed to it). Negative ms: the middleware knew before the next `/info` sample showed it.",
            "",
            "| event | round | node | role | variant | old → new | event → routed ms | lease → routed ms | "
            "node knows → routed ms | node's /info changes | stale writes | last stale ms after drop | 503s |",
            "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in sorted(res.moves, key=lambda m: (m.event != "failover", m.round, m.node, m.variant)):
            out.append(
                f"| {m.event} | {m.round} | {m.node} | {m.role} | {m.variant} | {m.old} → {m.new} | "
                f"{fmt(m.from_event, 0)} | {fmt(m.from_lease, 0)} | {fmt(m.from_node, 0)} | {m.views} | {m.stale} | "
                f"{fmt(m.stale_last, 0)} | {m.unavailable} |"
            )
        out.append("")
        if res.move_notes:
            out += ["Notes:", "", *[f"* {n}" for n in res.move_notes], ""]
    if res.tput:
        out += [
            "## 4. Throughput of a primary GET (wrk)",
            "",
            f"`bench/run.py`'s servers (`route` variant, default options), on node1's mount (the primary), "
            f"`LITEFS_API_URL` = node1's API or `off`. {cfg.rounds} interleaved rounds x {cfg.seconds:g} s (after "
            f"{cfg.warmup:g} s warm-up), server on CPU {cfg.server_cpu}, wrk -t1 on CPU {cfg.wrk_cpu}, ASGI "
            f"-c{cfg.asgi_connections}, WSGI -c{cfg.wsgi_connections}; LiteFS unpinned. Mount reads: "
            "`routing.cache.reads` of the server over the measured run (its `GET /__reads`).",
            "",
            "| stack | variant | req/s (median) | range | vs poll | p50 ms | p99 ms | mount reads/s |",
            "|---|---|---:|---|---:|---:|---:|---:|",
        ]
        for stack in STACKS:
            base = med([s.wrk.rps for s in res.tput.get((stack, "poll"), [])] or [math.nan])
            for variant in VARIANTS:
                samples = res.tput.get((stack, variant), [])
                if not samples:
                    continue
                rps = [s.wrk.rps for s in samples]
                out.append(
                    f"| {stack} | {variant} | {med(rps):,.0f} | {min(rps):,.0f} to {max(rps):,.0f} | "
                    f"{med(rps) / base:.1%} | {med([s.wrk.p50_ms for s in samples]):.3f} | "
                    f"{med([s.wrk.p99_ms for s in samples]):.3f} | "
                    f"{med([s.reads / s.seconds for s in samples]):.2f} |"
                )
        out.append("")
    if res.instr:
        out += [
            "## 5. Instructions per primary GET (valgrind)",
            "",
            f"`bench/instructions.py`'s method (callgrind, the app process, a run of {args.instructions_warmup} "
            f"requests subtracted from one of {args.instructions_warmup} + {args.instructions_n}, one request at a "
            "time, `BENCH_CACHE_TTL=3600` as there), the same servers and mount as section 4, `LITEFS_API_URL` "
            "set for each cell. The machine's load does not change these counts; the stream thread's own "
            "instructions (blocked in `recv` between events; none arrive on an idle primary) are in them.",
            "",
            "| stack | stream | poll | stream - poll |",
            "|---|---:|---:|---:|",
        ]
        for stack in STACKS:
            if (stack, "stream") in res.instr and (stack, "poll") in res.instr:
                s_i, p_i = res.instr[(stack, "stream")], res.instr[(stack, "poll")]
                out.append(f"| {stack} | {s_i:,.0f} | {p_i:,.0f} | {s_i - p_i:+,.0f} |")
        out.append("")
    return "\n".join(out)


# -- main -----------------------------------------------------------------------------------


@contextlib.contextmanager
def pair() -> Iterator[LiteFSCluster]:
    """node1 primary, node2 replica. A Consul lease, not a static one: LiteFSCluster's static-lease replicas
    replicate through a Python relay in this process, which added a 20-30 ms tail to one commit in ten."""
    with contextlib.closing(LiteFSCluster(instances=2, lease="consul", database=DATABASE)) as cluster:
        cluster.start()
        Writer(cluster, "node1").close()
        cluster.wait_replicated()
        yield cluster


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    WrkConfig.add_arguments(parser)
    parser.add_argument("--commits", type=int, default=200, help="latency rounds (a commit per kind) (default 200)")
    parser.add_argument("--reads-seconds", type=float, default=10, help="seconds per mount-reads row (default 10)")
    parser.add_argument("--failovers", type=int, default=6, help="failover + handoff rounds (default 6)")
    parser.add_argument("--write-threads", type=int, default=3, help="writer threads per middleware (default 3)")
    parser.add_argument("--write-period", type=float, default=0.005, help="s between one thread's writes")
    parser.add_argument("--instructions-n", type=int, default=300, help="requests counted per valgrind cell")
    parser.add_argument("--instructions-warmup", type=int, default=100, help="requests before counting")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections ({','.join(SECTIONS)})")
    parser.add_argument(
        "--quick", action="store_true", help="30 commits, 3 s rows, 1 failover, 1 wrk round x 2 s, 50 valgrind requests"
    )
    parser.add_argument("--verbose", action="store_true", help="show litefs-route's INFO/WARNING logs")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "stream.md")
    args = parser.parse_args(argv)
    command = " ".join(["python bench/stream_bench.py", *(sys.argv[1:] if argv is None else argv)])
    if args.quick:
        args.commits, args.reads_seconds, args.failovers, args.rounds, args.seconds = 30, 3, 1, 1, 2
        args.instructions_n, args.instructions_warmup = 50, 50
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        args.server_cpu = args.wrk_cpu = -1
    cfg = WrkConfig(**WrkConfig.fields(args))
    sections = set(args.only.split(","))
    if unknown := sections - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if reason := litefs_unavailable():
        raise SystemExit(reason)
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] %(name)s %(levelname)s: %(message)s")
    logging.getLogger("litefs_route").setLevel(logging.INFO if args.verbose else logging.ERROR)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    if "throughput" in sections:
        ensure_tool("wrk")
    # A SIGTERM runs the clean-up too (stop LiteFS, unmount), as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    t0 = time.perf_counter()
    res = Results()
    if sections & {"latency", "reads", "throughput", "instructions"}:
        with pair() as cluster:
            if cluster.primary != "node1":
                raise RuntimeError(f"node1 should be primary, not {cluster.primary}")
            node2 = cluster.nodes["node2"]
            # One stream middleware per mount in this process: a second one attached to the same
            # (API, mount) would never be pushed a state (see bench/README.md).
            mws = {variant: build(node2, variant) for variant in VARIANTS}
            stream_up(mws["stream"], "node2 stream")
            if mws["poll"].routing.subscriber is not None:
                raise RuntimeError('litefs_api_url="off" left routing.subscriber set')
            if "latency" in sections:
                res.lat = latency(cluster, mws, args.commits)
            if "reads" in sections:
                res.reads = reads(cluster, mws, args.reads_seconds)
            if "throughput" in sections:
                res.tput = throughput(cfg, cluster.nodes["node1"])
            if "instructions" in sections:
                node1 = cluster.nodes["node1"]
                res.instr = instructions(node1, args.instructions_n, args.instructions_warmup)
    if "failover" in sections:
        res.moves, res.move_notes, res.monitor_ms = failover(args.failovers, args.write_threads, args.write_period)
    text = report(res, args, cfg, time.perf_counter() - t0, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    log(f"written to {args.out}")


if __name__ == "__main__":
    main()
