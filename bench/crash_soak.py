"""The crash soak: exactly once while LiteFS primaries die, on real LiteFS (issue 23, item 5).

    python -m bench.crash_soak                        # the full run: 4 configurations, ~5 minutes
    python -m bench.crash_soak --json soak.json       # ... and the figures as JSON
    python -m bench.crash_soak --configs asgi-stream --writes 300 --changes 2 --app-kills 1   # a short one

Per configuration (adapter x event stream: ``asgi-stream``, ``asgi-poll``,
``wsgi-stream``, ``wsgi-poll``) a fresh cluster: 3 real LiteFS nodes
(``LiteFSCluster``, a Consul lease with TTL 3 s and lock-delay 1 s), each
with an app server (``bench/apps/soak.py``: Starlette under uvicorn, or Flask
under gunicorn; default middleware options, ``litefs_api_url="off"`` for
``-poll``), behind the Fly-like front proxy. ``--writers`` threads (httpx)
post ``--writes`` unique values through the front, each to a random instance
(``fly-force-instance-id``). Meanwhile the primary is hit ``--changes`` times
in its LiteFS (half SIGTERM, half kill -9) and ``--app-kills`` times in
its app server (kill -9), in a seeded random order, one fault after each
``writes / (faults + 1)`` answered writes; each victim is restarted once
the cluster has a primary again. Every request has a timeout and the run a
deadline (``--max-seconds``): it always stops by itself.

Then the cluster settles (one primary, every replica at its TXID) and the
table is read on every node. Counted per configuration and overall:

- **doubled**: a value present more than once (must be 0);
- **500s**: any 500 response (must be 0);
- **refused but ran**: answered 503, or any other refusal (a 4xx, a 502 of
  the front that sent nothing or refused a replay), yet present (must be 0);
  the answers that say the outcome is unknown are not refusals: a 502 with
  ``Litefs-Route-Outcome: unknown`` (the library), a 502 of the front whose
  connection to the instance broke after it sent the request (Fly's edge
  answers that too), and no answer at all (the client's timeout);
- **lost**: acknowledged (2xx) but absent. *Explained* when the node that
  acknowledged it (``Fly-Instance``) had its LiteFS killed (kill -9) between
  the request and ``--loss-window`` seconds after the acknowledgement:
  LiteFS replicates asynchronously. Counted apart: its LiteFS stopped by
  SIGTERM in that window (LiteFS hands the lease over on SIGTERM without
  waiting for its replicas: the same asynchronous loss). Unexplained (neither)
  must be 0;
- the 503s by reason (their first line, instance names and numbers
  blanked), the outcome-unknown answers and how many of them ran;
- writes sent while no primary was elected (from a primary's LiteFS going
  down to the new primary being named by every node): how they ended, and
  whether the acknowledged ones landed on the new primary; replays the front
  delivered to an instance whose LiteFS was down;
- acknowledged latency (p50/p99/max), and per fault the time to the new
  primary's election and to the first write it acknowledged.

Prints a summary, writes ``--json``, keeps each configuration's logs
(``--logs``), and exits 1 when an invariant is broken, 2 when a
configuration could not finish. Needs root (FUSE), ``fusermount3`` and the
``litefs`` binary (``bash .ci/install-litefs``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import shutil
import sqlite3
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from bench.apps.soak import SCHEMA, TABLE
from litefs_route._mount import parse_position
from litefs_route_devcluster.litefs import LITEFS_VERSION, LiteFSCluster, litefs_unavailable
from litefs_route_devcluster.proxy import ReplayEvent

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "app.db"
OUTCOME_HEADER = "Litefs-Route-Outcome"
Adapter = Literal["asgi", "wsgi"]
FaultKind = Literal["sigterm", "kill9-litefs", "kill9-app"]
LITEFS_FAULTS: tuple[FaultKind, ...] = ("sigterm", "kill9-litefs")


@dataclass(frozen=True)
class Config:
    """One configuration: an adapter (and its server) with the event stream on or off."""

    adapter: Adapter
    stream: bool

    @property
    def name(self) -> str:
        return f"{self.adapter}-{'stream' if self.stream else 'poll'}"

    @property
    def app(self) -> str:
        return f"bench.apps.soak:{self.adapter}_app"

    @classmethod
    def parse(cls, name: str) -> Config:
        adapter, _, mode = name.partition("-")
        if adapter not in ("asgi", "wsgi") or mode not in ("stream", "poll"):
            raise ValueError(f"a configuration is asgi|wsgi-stream|poll, not {name!r}")
        return cls("asgi" if adapter == "asgi" else "wsgi", mode == "stream")


ALL_CONFIGS = tuple(Config(a, s) for a in ("asgi", "wsgi") for s in (True, False))


@dataclass(frozen=True)
class Settings:
    """How hard and how long to soak each configuration."""

    writes: int = 1500
    writers: int = 6
    #: Primary changes: faults of the primary's LiteFS (SIGTERM and kill -9, alternately).
    changes: int = 10
    #: kill -9 of the primary's app server (the primary does not move).
    app_kills: int = 4
    seed: int = 23
    journal_mode: str | None = None
    request_timeout: float = 30.0
    max_seconds: float = 600.0
    loss_window: float = 1.0
    consul_ttl: float = 3.0
    consul_lock_delay: float = 1.0
    gunicorn_args: str = "--workers 2 --worker-class gthread --threads 4 --graceful-timeout 3"
    #: Where each configuration's logs are copied (None: not kept).
    logs_dir: str | None = None
    #: Where the clusters live (None: a temporary folder, removed).
    base_dir: str | None = None

    def schedule(self, config: Config) -> list[FaultKind]:
        """The faults, in a seeded random order (the same for a configuration from run to run)."""
        litefs = [LITEFS_FAULTS[i % 2] for i in range(self.changes)]
        app: list[FaultKind] = ["kill9-app"] * self.app_kills
        faults = [*litefs, *app]
        random.Random(f"{self.seed}-{config.name}").shuffle(faults)
        return faults


@dataclass
class Write:
    """One write and what answered it."""

    value: str
    writer: int
    #: The instance the front was told to send it to (``fly-force-instance-id``).
    forced: str
    sent: float
    done: float = 0.0
    status: int | None = None
    #: ``Fly-Instance`` of the answer (who answered; None for the front's own errors).
    instance: str | None = None
    outcome: str | None = None
    edge_error: str | None = None
    request_id: str | None = None
    body: str = ""
    #: The client's exception when no answer came.
    error: str | None = None

    @property
    def category(self) -> str:
        """acked, 500, unknown-library, unknown-edge, unknown-client, 503 or refused."""
        if self.status is None:
            return "unknown-client"
        if 200 <= self.status < 300:
            return "acked"
        if self.status == 500:
            return "500"
        if self.status == 502 and (self.outcome or "").lower() == "unknown":
            return "unknown-library"
        if self.status == 502 and self.edge_error == "upstream-failed":
            return "unknown-edge"  # the instance's connection broke after the request was sent
        if self.status == 503:
            return "503"
        return "refused"

    @property
    def reason(self) -> str:
        """The answer's first line with instance names and numbers blanked (to group 503s by reason)."""
        if self.error is not None:
            return self.error
        first = self.body.strip().splitlines()[0] if self.body.strip() else "(empty body)"
        first = re.sub(r"node\d+", "<node>", first)
        return re.sub(r"\d+(\.\d+)?", "N", first)[:200]


@dataclass
class Fault:
    """One fault of the primary and how the cluster came back."""

    kind: FaultKind
    node: str
    at: float
    #: When the new primary was named by every running node (LiteFS faults).
    elected_at: float | None = None
    new_primary: str | None = None
    #: When the victim was running again (its LiteFS knowing the primary, or its app server listening).
    restarted_at: float | None = None


@dataclass
class Counts:
    """The figures of one configuration, or of all of them."""

    writes: int = 0
    acked: int = 0
    doubled: int = 0
    errors_500: int = 0
    errors_500_ran: int = 0
    refused_but_ran: int = 0
    lost_explained: int = 0
    #: Acknowledged, absent, and its node's LiteFS stopped (SIGTERM) within the loss window: LiteFS
    #: releases the lease on SIGTERM without waiting for the replicas, so its last transactions can go too.
    lost_sigterm: int = 0
    lost_unexplained: int = 0
    unknown_library: int = 0
    unknown_library_ran: int = 0
    unknown_edge: int = 0
    unknown_edge_ran: int = 0
    unknown_client: int = 0
    unknown_client_ran: int = 0
    unavailable_503: int = 0
    refused_other: int = 0
    primary_changes: int = 0
    app_kills: int = 0
    #: Writes sent while no primary was elected, and how they ended.
    waited: int = 0
    waited_on_new_primary: int = 0
    waited_acked_elsewhere: int = 0
    waited_503: int = 0
    waited_other: int = 0
    #: Replays the front delivered to an instance whose LiteFS was down.
    replays_to_dead: int = 0
    #: Lines of the app logs: the safety net's replays, the INSERTs SQLite failed.
    log_safety_net: int = 0
    log_failed_inserts: int = 0
    reasons_503: dict[str, int] = field(default_factory=dict)
    #: The app's failed INSERTs behind the 500s, by SQLite's message.
    reasons_500: dict[str, int] = field(default_factory=dict)
    #: Every failed INSERT the apps logged: "<SQLite's message> -> <how its write ended>[, ran]".
    failed_inserts: dict[str, int] = field(default_factory=dict)
    reasons_refused: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    #: Per fault kind: ms from the fault to the election, and to the new primary's first acknowledged write.
    elected_ms: dict[str, list[float]] = field(default_factory=dict)
    first_ack_ms: dict[str, list[float]] = field(default_factory=dict)

    def add(self, other: Counts) -> None:
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, int):
                setattr(self, f.name, mine + theirs)
            elif isinstance(mine, list):
                mine.extend(theirs)
            else:
                for key, value in theirs.items():
                    mine[key] = mine.get(key, 0) + value if isinstance(value, int) else [*mine.get(key, []), *value]

    def violations(self) -> list[str]:
        """The invariants this broke, in words (empty: none)."""
        broken = {
            "doubled": self.doubled,
            "500s": self.errors_500,
            "refused but ran": self.refused_but_ran,
            "unexplained lost": self.lost_unexplained,
        }
        return [f"{name}: {count}" for name, count in broken.items() if count]


@dataclass
class ConfigResult:
    config: str
    counts: Counts
    faults: list[dict[str, Any]]
    #: Each node's row count, and whether every node holds the same rows.
    rows: dict[str, int]
    nodes_agree: bool
    seconds: float
    #: Why the configuration did not finish (None: it did).
    incomplete: str | None
    #: The writes behind each broken invariant (and samples of the rest), with their replays.
    evidence: dict[str, list[dict[str, Any]]]


@dataclass
class Report:
    results: list[ConfigResult]
    total: Counts
    settings: Settings
    seconds: float

    def violations(self) -> list[str]:
        problems = [f"{r.config}: did not finish: {r.incomplete}" for r in self.results if r.incomplete]
        problems += [f"{r.config}: the nodes hold different rows" for r in self.results if not r.nodes_agree]
        return problems + [f"{r.config}: {v}" for r in self.results for v in r.counts.violations()]


@dataclass
class Observed:
    """What one configuration's run left to count: the answers, the faults, the tables, the replays, the logs."""

    writes: list[Write]
    faults: list[Fault]
    #: Node id -> value -> how many rows hold it.
    tables: dict[str, Counter[str]]
    #: The rows (instance that ran it, seconds into the run) of each value present more than once.
    doubled_rows: dict[str, list[tuple[str, float]]]
    primary: str
    replays: list[ReplayEvent]
    #: The app logs' lines, with each failed INSERT's by value.
    log_lines: list[str]
    #: When the run began: ``time.monotonic()`` and ``time.time()``.
    began: float
    began_wall: float

    def failures(self) -> dict[str, list[str]]:
        """Value -> the app's log lines saying its INSERT failed (where, when, with what)."""
        found: dict[str, list[str]] = {}
        for line in self.log_lines:
            match = _FAILED_INSERT.search(line)
            if match:
                found.setdefault(match["value"], []).append(line.strip())
        return found


_FAILED_INSERT = re.compile(r"INSERT of (?P<value>\S+) failed: (?P<error>.*)$")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the writers ----------------------------------------------------------------------


class Traffic:
    """``writes`` tickets shared by the writers, and the answered writes so far."""

    def __init__(self, writes: int, deadline: float) -> None:
        self.total = writes
        self.deadline = deadline
        self.records: list[Write] = []
        self._issued = 0
        self._stopped = False
        self._changed = threading.Condition()

    def take(self) -> int | None:
        """The next ticket; None when all are taken, the deadline has passed, or the run was stopped."""
        with self._changed:
            if self._stopped or self._issued >= self.total or time.monotonic() > self.deadline:
                return None
            self._issued += 1
            return self._issued

    def answered(self, write: Write) -> None:
        with self._changed:
            self.records.append(write)
            self._changed.notify_all()

    @property
    def count(self) -> int:
        with self._changed:
            return len(self.records)

    def wait_count(self, count: int) -> bool:
        """Wait until *count* writes were answered (or every ticket was, or the deadline); whether it was reached."""
        with self._changed:
            self._changed.wait_for(
                lambda: len(self.records) >= min(count, self.total) or time.monotonic() > self.deadline,
                timeout=max(0.0, self.deadline - time.monotonic()),
            )
            return len(self.records) >= min(count, self.total)

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()


def writer(
    number: int, config: Config, front_url: str, ids: Sequence[str], traffic: Traffic, settings: Settings
) -> None:
    rng = random.Random(f"{settings.seed}-{config.name}-{number}")
    with httpx.Client(base_url=front_url, timeout=settings.request_timeout) as client:
        while (ticket := traffic.take()) is not None:
            forced = rng.choice(ids)
            value = f"{config.name}-{ticket:06d}"
            write = Write(value=value, writer=number, forced=forced, sent=time.monotonic())
            try:
                response = client.post(
                    "/write", content=value, headers={"fly-force-instance-id": forced, "content-type": "text/plain"}
                )
            except httpx.HTTPError as exc:
                write.error = f"{type(exc).__name__}: {exc}"[:300]
            else:
                write.status = response.status_code
                write.instance = response.headers.get("fly-instance")
                write.outcome = response.headers.get(OUTCOME_HEADER)
                write.edge_error = response.headers.get("fly-devcluster-error")
                write.request_id = response.headers.get("fly-request-id")
                if not 200 <= response.status_code < 300:
                    write.body = response.text[:500]
            write.done = time.monotonic()
            client.cookies.clear()  # each write stands alone: no read-your-writes cookie carried over
            traffic.answered(write)


# -- one configuration ------------------------------------------------------------------


def run_config(config: Config, settings: Settings) -> ConfigResult:
    """Soak one configuration on a fresh cluster."""
    began = time.monotonic()
    deadline = began + settings.max_seconds
    env = {"SOAK_EVENT_STREAM": "on" if config.stream else "off", "GUNICORN_CMD_ARGS": settings.gunicorn_args}
    base_dir = os.path.join(settings.base_dir, config.name) if settings.base_dir else None
    cluster = LiteFSCluster(
        config.app,
        instances=3,
        lease="consul",
        database=DATABASE,
        consul_ttl=settings.consul_ttl,
        consul_lock_delay=settings.consul_lock_delay,
        app_dir=ROOT,
        env=env,
        base_dir=base_dir,
        wsgi_server="gunicorn" if config.adapter == "wsgi" else "auto",
    )
    traffic = Traffic(settings.writes, deadline)
    faults: list[Fault] = []
    incomplete: str | None = None
    observed = Observed([], faults, {}, {}, cluster.ids[0], [], [], began, time.time())
    with contextlib.closing(cluster):
        log(f"{config.name}: starting 3 LiteFS nodes and the {config.adapter} app servers")
        try:
            cluster.start()
            create_table(cluster, settings.journal_mode)
        except (TimeoutError, RuntimeError, OSError, sqlite3.Error) as exc:
            incomplete = f"the cluster did not start: {type(exc).__name__}: {exc}"
            log(f"{config.name}: {incomplete}")
        threads = [
            threading.Thread(
                target=writer,
                args=(n, config, cluster.front_url, cluster.ids, traffic, settings),
                name=f"soak-writer-{n}",
                daemon=True,
            )
            for n in range(settings.writers)
        ]
        for thread in threads if incomplete is None else ():
            thread.start()
        try:
            if incomplete is not None:
                raise RuntimeError(incomplete)
            schedule = settings.schedule(config)
            batch = settings.writes // (len(schedule) + 1)
            for number, kind in enumerate(schedule, 1):
                if not traffic.wait_count(traffic.count + batch):
                    raise TimeoutError(f"writes stopped before fault {number}")
                fault = inflict(cluster, kind)
                faults.append(fault)
                log(f"{config.name}: fault {number}/{len(schedule)} {describe(fault)}; {traffic.count} writes answered")
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            if any(thread.is_alive() for thread in threads):
                raise TimeoutError("writers still busy at the deadline")
            if traffic.count < settings.writes:
                raise TimeoutError(f"only {traffic.count} of {settings.writes} writes were sent before the deadline")
            cluster.wait_replicated(timeout=30)
        except (TimeoutError, RuntimeError, OSError) as exc:
            incomplete = f"{type(exc).__name__}: {exc}"
            log(f"{config.name}: DID NOT FINISH: {incomplete}")
            traffic.stop()
            for thread in threads:
                if thread.is_alive() or thread.ident is not None:
                    thread.join(settings.request_timeout + 5)
        with contextlib.suppress(RuntimeError):  # no front: the cluster never started
            observed.replays = list(cluster.front.replays)
        try:
            observed.primary = cluster.primary or observed.primary
            observed.tables, observed.doubled_rows = read_tables(cluster, observed.began_wall)
        except (OSError, sqlite3.Error) as exc:
            incomplete = incomplete or f"the tables could not be read: {exc}"
        if cluster.base_dir and os.path.isdir(os.path.join(cluster.base_dir, "logs")):
            if settings.logs_dir:
                keep_logs(cluster.base_dir, os.path.join(settings.logs_dir, config.name))
            observed.log_lines = read_logs(cluster.base_dir)
    observed.writes = traffic.records
    counts, evidence = tally(observed, settings)
    per_node = {node: sum(rows.values()) for node, rows in observed.tables.items()}
    agree = len({tuple(sorted(rows.items())) for rows in observed.tables.values()}) <= 1
    return ConfigResult(
        config=config.name,
        counts=counts,
        faults=[fault_json(f, began) for f in faults],
        rows=per_node,
        nodes_agree=agree,
        seconds=round(time.monotonic() - began, 1),
        incomplete=incomplete,
        evidence=evidence,
    )


def create_table(cluster: LiteFSCluster, journal_mode: str | None) -> None:
    """The table, created on the primary's mount (WAL first if asked), replicated before the writes start."""
    primary = cluster.wait_primary()
    conn = sqlite3.connect(cluster.db_path(primary), timeout=10, isolation_level=None)
    try:
        if journal_mode:
            conn.execute(f"PRAGMA journal_mode={journal_mode}")
        conn.execute(SCHEMA)
    finally:
        conn.close()
    cluster.wait_replicated(timeout=30)


def inflict(cluster: LiteFSCluster, kind: FaultKind) -> Fault:
    """Hit the primary with *kind*; wait for a primary again; restart the victim."""
    old = cluster.wait_primary(timeout=30)
    fault = Fault(kind, old, time.monotonic())
    if kind == "kill9-app":
        cluster.kill_app(old)
        cluster.start_app(old)
        fault.new_primary = old
        fault.restarted_at = time.monotonic()
        return fault
    if kind == "sigterm":
        cluster.stop_node(old)
    else:
        cluster.kill_node(old)
    fault.new_primary = cluster.wait_primary(timeout=30)
    fault.elected_at = time.monotonic()
    cluster.start_node(old)
    cluster.wait_primary(fault.new_primary, timeout=30)  # the victim names it too
    fault.restarted_at = time.monotonic()
    return fault


def describe(fault: Fault) -> str:
    if fault.elected_at is None:
        return f"{fault.kind} on {fault.node}: back in {fault.restarted_at and fault.restarted_at - fault.at:.1f} s"
    return f"{fault.kind} on {fault.node}: {fault.new_primary} elected after {fault.elected_at - fault.at:.1f} s"


def fault_json(fault: Fault, began: float) -> dict[str, Any]:
    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - began, 3)

    return {
        "kind": fault.kind,
        "node": fault.node,
        "at_s": rel(fault.at),
        "elected_at_s": rel(fault.elected_at),
        "new_primary": fault.new_primary,
        "restarted_at_s": rel(fault.restarted_at),
    }


def read_tables(
    cluster: LiteFSCluster, began_wall: float
) -> tuple[dict[str, Counter[str]], dict[str, list[tuple[str, float]]]]:
    """Node id -> value -> how many rows hold it, on every running node; and the rows of each doubled value.

    Read on the primary, with a connection that may write: a node whose LiteFS
    was killed mid-transaction can leave a hot journal, which only a writer may
    roll back (a replica answers "attempt to write a readonly database"). A
    replica at the primary's position (TXID and checksum: LiteFS's checksum of
    the whole database) holds the same rows; one that is not is read itself.
    """
    primary = cluster.wait_primary(timeout=30)
    conn = sqlite3.connect(cluster.db_path(primary), timeout=10, isolation_level=None)
    try:
        rows = Counter(value for (value,) in conn.execute(f"SELECT value FROM {TABLE}"))
        doubled: dict[str, list[tuple[str, float]]] = {}
        for value in (value for value, n in rows.items() if n > 1):
            found = conn.execute(f"SELECT instance, at FROM {TABLE} WHERE value = ?", (value,))
            doubled[value] = [(instance, round(at - began_wall, 3)) for instance, at in found]
    finally:
        conn.close()
    tables: dict[str, Counter[str]] = {primary: rows}
    at_primary = parse_position(cluster.read(primary, f"{cluster.database}-pos") or b"")
    for node in cluster.running:
        if node == primary:
            continue
        if (
            at_primary is not None
            and parse_position(cluster.read(node, f"{cluster.database}-pos") or b"") == at_primary
        ):
            tables[node] = rows
            continue
        replica = sqlite3.connect(f"file:{cluster.db_path(node)}?mode=ro", uri=True, timeout=10)
        try:
            tables[node] = Counter(value for (value,) in replica.execute(f"SELECT value FROM {TABLE}"))
        finally:
            replica.close()
    return tables, doubled


def keep_logs(base_dir: str, target: str) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(os.path.join(base_dir, "logs"), target)


def read_logs(base_dir: str) -> list[str]:
    lines: list[str] = []
    folder = os.path.join(base_dir, "logs")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".app.log"):
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                lines += f.readlines()
    return lines


# -- counting ------------------------------------------------------------------------------


def tally(observed: Observed, settings: Settings) -> tuple[Counts, dict[str, list[dict[str, Any]]]]:
    """The figures of one configuration, and the writes behind each broken invariant."""
    writes, faults, tables, replays = observed.writes, observed.faults, observed.tables, observed.replays
    present = tables.get(observed.primary) or next(iter(tables.values()), Counter())
    failures = observed.failures()
    most = Counter[str]()
    for rows in tables.values():
        for value, n in rows.items():
            most[value] = max(most[value], n)
    hops: dict[str, list[ReplayEvent]] = {}
    for event in replays:
        hops.setdefault(event.request_id, []).append(event)
    kills = [f for f in faults if f.kind == "kill9-litefs"]
    sigterms = [f for f in faults if f.kind == "sigterm"]
    outages = [f for f in faults if f.elected_at is not None]
    counts = Counts(writes=len(writes), primary_changes=len(outages), app_kills=len(faults) - len(outages))
    evidence: dict[str, list[dict[str, Any]]] = {}

    def cite(kind: str, write: Write) -> None:
        record = write_json(write, present[write.value], hops.get(write.request_id or ""), observed.began)
        record["faults_near"] = [
            f"{f.kind} of {f.node} at {f.at - write.sent:+.3f} s"
            for f in faults
            if write.sent - 5 <= f.at <= write.done + settings.loss_window
        ]
        if write.value in observed.doubled_rows:
            record["rows_ran_on_at_s"] = observed.doubled_rows[write.value]
        if write.value in failures:
            record["app_log"] = failures[write.value]
        evidence.setdefault(kind, []).append(record)

    def lost_to(stops: Sequence[Fault], w: Write) -> bool:
        return any(f.node == w.instance and w.sent <= f.at <= w.done + settings.loss_window for f in stops)

    counts.doubled = sum(1 for n in most.values() if n > 1)
    by_value = {w.value: w for w in writes}
    for value, n in most.items():
        if n > 1:
            if value in by_value:
                cite("doubled", by_value[value])
            else:
                evidence.setdefault("doubled", []).append({"value": value, "rows": n})
    for w in writes:
        ran = present[w.value] > 0
        category = w.category
        if category == "acked":
            counts.acked += 1
            counts.latencies_ms.append((w.done - w.sent) * 1000)
            if not ran:
                if lost_to(kills, w):
                    counts.lost_explained += 1
                    cite("lost (explained)", w)
                elif lost_to(sigterms, w):
                    counts.lost_sigterm += 1
                    cite("lost (SIGTERM)", w)
                else:
                    counts.lost_unexplained += 1
                    cite("lost (unexplained)", w)
        elif category == "500":
            counts.errors_500 += 1
            counts.errors_500_ran += ran
            cite("500", w)
            for line in failures.get(w.value, ["(no failed INSERT logged)"]):
                error = _FAILED_INSERT.search(line)
                reason = error["error"] if error else line
                counts.reasons_500[reason] = counts.reasons_500.get(reason, 0) + 1
        elif category.startswith("unknown-"):
            kind = category.removeprefix("unknown-")
            setattr(counts, f"unknown_{kind}", getattr(counts, f"unknown_{kind}") + 1)
            setattr(counts, f"unknown_{kind}_ran", getattr(counts, f"unknown_{kind}_ran") + ran)
            if len(evidence.get(category, [])) < 20:
                cite(category, w)
        else:
            reasons = counts.reasons_503 if category == "503" else counts.reasons_refused
            reasons[w.reason] = reasons.get(w.reason, 0) + 1
            if category == "503":
                counts.unavailable_503 += 1
            else:
                counts.refused_other += 1
            if ran:
                counts.refused_but_ran += 1
                cite("refused but ran", w)
        outage = next((f for f in outages if f.at <= w.sent < (f.elected_at or 0)), None)
        if outage is not None:
            counts.waited += 1
            if category == "acked" and w.instance == outage.new_primary:
                counts.waited_on_new_primary += 1
            elif category == "acked":
                counts.waited_acked_elsewhere += 1
                cite("waited, acknowledged elsewhere", w)
            elif category == "503":
                counts.waited_503 += 1
                if len(evidence.get("waited, 503", [])) < 20:
                    cite("waited, 503", w)
            else:
                counts.waited_other += 1
                cite("waited, other", w)
    for event in replays:
        if event.refused is None and any(
            f.node == event.to_instance and f.at <= event.at < (f.restarted_at or math.inf) for f in outages
        ):
            counts.replays_to_dead += 1
    counts.log_safety_net = sum("did not run: the database refused its write" in line for line in observed.log_lines)
    counts.log_failed_inserts = sum(len(lines) for lines in failures.values())
    ended = {w.value: w.category for w in writes}
    for value, lines in failures.items():
        for line in lines:
            error = _FAILED_INSERT.search(line)
            outcome = ended.get(value, "?") + (", ran" if present[value] else "")
            key = f"{error['error'] if error else line} -> {outcome}"
            counts.failed_inserts[key] = counts.failed_inserts.get(key, 0) + 1
    acked = [w for w in writes if w.category == "acked"]
    for fault in faults:
        kind = fault.kind
        if fault.elected_at is not None:
            counts.elected_ms.setdefault(kind, []).append((fault.elected_at - fault.at) * 1000)
        # Sent after the fault when the primary stays (its app server killed): an
        # answer already on its way when the server died says nothing of its return.
        after = fault.at if fault.kind == "kill9-app" else -math.inf
        acks = (w.done for w in acked if w.instance == fault.new_primary and w.done > fault.at and w.sent > after)
        first = min(acks, default=None)
        if first is not None:
            counts.first_ack_ms.setdefault(kind, []).append((first - fault.at) * 1000)
    return counts, evidence


def write_json(write: Write, rows: int, hops: Iterable[ReplayEvent] | None, began: float) -> dict[str, Any]:
    record = {k: v for k, v in dataclasses.asdict(write).items() if v not in (None, "")}
    record["sent_s"] = round(write.sent - began, 3)
    record["latency_ms"] = round((write.done - write.sent) * 1000, 1)
    record["rows"] = rows
    record["replays"] = [
        f"+{(e.at - write.sent) * 1000:.0f} ms {e.from_instance} -> {e.to_instance or '-'}"
        + (f" ({e.refused})" if e.refused else "")
        for e in hops or ()
    ]
    for name in ("sent", "done"):
        record.pop(name, None)
    return record


# -- the report ------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (nearest rank); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def spread(values: Sequence[float]) -> str:
    return "-" if not values else f"{statistics.median(values):.0f} / {max(values):.0f}"


def run_soak(
    configs: Sequence[Config], settings: Settings, on_result: Callable[[ConfigResult], None] | None = None
) -> Report:
    """Soak every configuration in turn; the report (call ``violations()`` on it)."""
    began = time.monotonic()
    results: list[ConfigResult] = []
    for config in configs:
        result = run_config(config, settings)
        results.append(result)
        if on_result is not None:
            on_result(result)
    total = Counts()
    for result in results:
        total.add(result.counts)
    return Report(results, total, settings, round(time.monotonic() - began, 1))


Row = tuple[str, Callable[[Counts], str]]


def _elected_row(kind: str) -> Row:
    return f"{kind}: elected, ms med/max", lambda c: spread(c.elected_ms.get(kind, []))


def _first_ack_row(kind: str) -> Row:
    return f"{kind}: 1st ack, ms med/max", lambda c: spread(c.first_ack_ms.get(kind, []))


ROWS: tuple[Row, ...] = (
    ("writes", lambda c: str(c.writes)),
    ("acknowledged (2xx)", lambda c: str(c.acked)),
    ("primary changes / app kills", lambda c: f"{c.primary_changes} / {c.app_kills}"),
    ("DOUBLED (must be 0)", lambda c: str(c.doubled)),
    ("500s (must be 0)", lambda c: f"{c.errors_500} ({c.errors_500_ran} ran)"),
    ("REFUSED BUT RAN (must be 0)", lambda c: str(c.refused_but_ran)),
    ("lost, explained (kill -9 <= 1 s after)", lambda c: str(c.lost_explained)),
    ("lost, acked <= 1 s before a SIGTERM", lambda c: str(c.lost_sigterm)),
    ("LOST, UNEXPLAINED (must be 0)", lambda c: str(c.lost_unexplained)),
    ("502 outcome unknown (library)", lambda c: f"{c.unknown_library} ({c.unknown_library_ran} ran)"),
    ("502 outcome unknown (front)", lambda c: f"{c.unknown_edge} ({c.unknown_edge_ran} ran)"),
    ("no answer (client timeout)", lambda c: f"{c.unknown_client} ({c.unknown_client_ran} ran)"),
    ("503s", lambda c: str(c.unavailable_503)),
    ("other refusals", lambda c: str(c.refused_other)),
    ("sent with no primary elected", lambda c: str(c.waited)),
    ("  -> acked by the new primary", lambda c: str(c.waited_on_new_primary)),
    ("  -> acked elsewhere", lambda c: str(c.waited_acked_elsewhere)),
    ("  -> 503 / other", lambda c: f"{c.waited_503} / {c.waited_other}"),
    ("replays delivered to a dead LiteFS", lambda c: str(c.replays_to_dead)),
    ("safety-net replays logged", lambda c: str(c.log_safety_net)),
    ("failed INSERTs logged", lambda c: str(c.log_failed_inserts)),
    ("ack latency p50/p99/max ms", lambda c: "/".join(ms(pct(c.latencies_ms, p)) for p in (50, 99, 100))),
    *(_elected_row(kind) for kind in LITEFS_FAULTS),
    *(_first_ack_row(kind) for kind in (*LITEFS_FAULTS, "kill9-app")),
)


def summary(report: Report) -> str:
    names = [r.config for r in report.results] + ["total"]
    counts = [r.counts for r in report.results] + [report.total]
    width = max(len(label) for label, _ in ROWS)
    cells = [[render(c) for c in counts] for _, render in ROWS]
    widths = [max(len(names[i]), *(len(row[i]) for row in cells)) for i in range(len(names))]
    lines = ["  ".join([" " * width, *(n.rjust(w) for n, w in zip(names, widths, strict=True))])]
    for (label, _), row in zip(ROWS, cells, strict=True):
        lines.append("  ".join([label.ljust(width), *(v.rjust(w) for v, w in zip(row, widths, strict=True))]))
    for title, reasons in (
        ("500s, by the failed INSERT the app logged", report.total.reasons_500),
        ("failed INSERTs (SQLite's answer -> how the write ended)", report.total.failed_inserts),
        ("503 reasons", report.total.reasons_503),
        ("other refusals", report.total.reasons_refused),
    ):
        if reasons:
            lines.append(f"{title}:")
            lines += [f"  {n:6d}  {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    for result in report.results:
        state = "" if result.incomplete is None else f"  DID NOT FINISH: {result.incomplete}"
        agree = "agree" if result.nodes_agree else "DISAGREE"
        lines.append(f"{result.config}: {result.seconds} s, rows per node {result.rows} ({agree}){state}")
    problems = report.violations()
    lines.append("INVARIANTS BROKEN: " + "; ".join(problems) if problems else "every invariant held")
    return "\n".join(lines)


def report_json(report: Report) -> dict[str, Any]:
    def counts_json(c: Counts) -> dict[str, Any]:
        data = dataclasses.asdict(c)
        latencies = data.pop("latencies_ms")
        data["latency_ms"] = {f"p{p}": pct(latencies, p) for p in (50, 99, 100)}
        return data

    return {
        "litefs": LITEFS_VERSION,
        "settings": dataclasses.asdict(report.settings),
        "seconds": report.seconds,
        "violations": report.violations(),
        "total": counts_json(report.total),
        "configurations": [
            {**{k: v for k, v in dataclasses.asdict(r).items() if k != "counts"}, "counts": counts_json(r.counts)}
            for r in report.results
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.crash_soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [c.name for c in ALL_CONFIGS]
    defaults = Settings()
    parser.add_argument("--configs", default=",".join(names), help=f"comma-separated, of {', '.join(names)} (all)")
    parser.add_argument("--writes", type=int, default=defaults.writes, help="writes per configuration (1500)")
    parser.add_argument("--writers", type=int, default=defaults.writers, help="concurrent writers (6)")
    parser.add_argument("--changes", type=int, default=defaults.changes, help="primary changes per configuration (10)")
    parser.add_argument("--app-kills", type=int, default=defaults.app_kills, help="app server kills per config (4)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--journal-mode", choices=["delete", "wal"], default=None, help="default: SQLite's (delete)")
    parser.add_argument("--request-timeout", type=float, default=defaults.request_timeout)
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds, help="deadline per configuration")
    parser.add_argument("--loss-window", type=float, default=defaults.loss_window)
    parser.add_argument("--logs", default=str(ROOT / "bench" / "results" / "crash-soak-logs"), help="kept logs")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    reason = litefs_unavailable()
    if reason is not None:
        parser.exit(2, f"cannot run the soak: {reason}\n")
    settings = Settings(
        writes=args.writes,
        writers=args.writers,
        changes=args.changes,
        app_kills=args.app_kills,
        seed=args.seed,
        journal_mode=args.journal_mode,
        request_timeout=args.request_timeout,
        max_seconds=args.max_seconds,
        loss_window=args.loss_window,
        logs_dir=args.logs or None,
    )
    configs = [Config.parse(name.strip()) for name in args.configs.split(",") if name.strip()]
    report = run_soak(configs, settings, lambda r: log(f"{r.config}: done in {r.seconds} s: {r.counts.violations()}"))
    print(summary(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report_json(report), indent=2) + "\n")
        log(f"figures written to {args.json}")
    if any(r.incomplete for r in report.results):
        return 2
    return 1 if report.violations() else 0


if __name__ == "__main__":
    sys.exit(main())
