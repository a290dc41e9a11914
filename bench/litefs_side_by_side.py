"""Side by side with LiteFS's own proxy, on real LiteFS mounts.

    python bench/litefs_side_by_side.py           # ~11 minutes, writes bench/results/litefs.md
    python bench/litefs_side_by_side.py --quick   # ~3 minutes: 1 round x 2 s, 3 valgrind cells (ASGI)

One run starts a real two-node LiteFS cluster (v0.5.14, static lease: a
primary and a replica, each ``litefs mount`` with its own FUSE mount, HTTP API
and ``proxy:`` section), creates the database on the primary and waits until
the replica has it, then measures, for uvicorn + Starlette (ASGI) and
gunicorn sync + Flask (WSGI), the same servers and wrk settings as
``bench/run.py``:

* ``bare``: the app, no middleware (its GET and POST are the baselines);
* ``naive``: reads ``.primary`` on every request, now a FUSE round trip to
  the LiteFS process;
* ``route``: litefs-route (``cache_ttl=1``);
* ``litefs-proxy``: the bare app behind LiteFS's own proxy, requests sent to
  the proxy's port (each node's ``proxy.target`` is a port fixed for the
  run, on which the bare server is started when this variant is measured).

Requests: a primary GET, a replica GET, a replica POST (the replay). Each
server is checked before it is measured (status, ``fly-replay`` naming the
primary, litefs-route's tags). Cells run in interleaved rounds, the variant
order rotated each round, medians reported (``bench/run.py``'s helpers).
Besides wrk's req/s and latency, each cell reports the CPU time per request
of the app process and of LiteFS (both ``litefs`` processes, from
``/proc/<pid>/stat``): the naive middleware's FUSE round trips and the
proxy's extra HTTP hop are work in the LiteFS process that neither wrk's
latency alone nor valgrind shows. LiteFS runs pinned to the server's CPU (as
app and LiteFS share a Fly Machine's vCPU); wrk has the other one.

Instructions per request under valgrind (``bench/instructions.py``) where
they can be counted: the Python server's only. LiteFS is Go, which valgrind
does not run reliably, and this machine's ``perf`` has no hardware counters,
so the proxy's own instructions are not counted (its CPU time above is).

The report (Markdown) is printed and written to ``bench/results/litefs.md``.
Needs root (FUSE mounts), ``fusermount3`` and the ``litefs`` binary
(``.ci/install-litefs``); installs ``wrk`` and ``valgrind`` with apt-get if
missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench.instructions import Where  # noqa: E402
from bench.instructions import count as count_instructions  # noqa: E402
from bench.mount import PRIMARY_ID, SELF_ID  # noqa: E402
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
    wrk_columns,
)
from litefs_route._mount import parse_position  # noqa: E402
from litefs_route_devcluster import free_port  # noqa: E402
from litefs_route_devcluster.litefs import LITEFS_VERSION, find_litefs, litefs_unavailable  # noqa: E402

DATABASE = "app.db"
VARIANTS = ("bare", "naive", "route", "litefs-proxy")
LABEL = {
    "bare": "bare app",
    "naive": "naive (reads `.primary` per request)",
    "route": "litefs-route",
    "litefs-proxy": "LiteFS proxy → bare app",
}
# (mount, method); "-": the bare app does not look at the mount (it runs on the primary's).
SCENARIOS = {
    "bare": (("-", "GET"), ("-", "POST")),
    "naive": (("primary", "GET"), ("replica", "GET"), ("replica", "POST")),
    "route": (("primary", "GET"), ("replica", "GET"), ("replica", "POST")),
    "litefs-proxy": (("primary", "GET"), ("replica", "GET"), ("replica", "POST")),
}
NODE_OF = {"-": "primary", "primary": "primary", "replica": "replica"}
# Counted under valgrind: the Python server's instructions per request. (Not the naive
# middleware: callgrind misses its system calls and the FUSE work, which is its whole cost.)
INSTRUCTION_CELLS = (
    ("bare", "-", "GET"),
    ("route", "primary", "GET"),
    ("litefs-proxy", "primary", "GET"),
    ("route", "replica", "POST"),
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the LiteFS cluster ---------------------------------------------------------


@dataclass
class Node:
    role: str  # "primary" or "replica"
    id: str  # lease hostname = FLY_MACHINE_ID of its app server
    root: Path
    http_port: int = field(default_factory=free_port)
    proxy_port: int = field(default_factory=free_port)
    #: Where LiteFS's proxy sends requests: the bare server runs here for the litefs-proxy cells.
    target_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def mount(self) -> Path:
        return self.root / "mnt"

    @property
    def log_path(self) -> Path:
        return self.root / "litefs.log"

    def config(self, primary: Node) -> dict[str, Any]:
        """This node's ``litefs.yml``: a static lease, the HTTP API, the proxy in front of ``target_port``."""
        return {
            "fuse": {"dir": str(self.mount)},
            "data": {"dir": str(self.root / "data")},
            "http": {"addr": f"127.0.0.1:{self.http_port}"},
            "lease": {
                "type": "static",
                "hostname": primary.id,
                "advertise-url": f"http://127.0.0.1:{primary.http_port}",
                "candidate": self is primary,
            },
            "proxy": {
                "addr": f"127.0.0.1:{self.proxy_port}",
                "target": f"127.0.0.1:{self.target_port}",
                "db": DATABASE,
            },
            "exit-on-error": False,
        }

    def info(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/info", timeout=2) as response:
            payload: dict[str, Any] = json.load(response)
        return payload

    def position(self) -> int | None:
        try:
            position = parse_position((self.mount / f"{DATABASE}-pos").read_bytes())
        except FileNotFoundError:
            return None
        return position.txid if position is not None else None


def mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts if len(line.split()) > 1)


def wait_until(what: str, condition: Any, node: Node, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if node.proc is not None and node.proc.poll() is not None:
            raise RuntimeError(f"LiteFS {node.role} exited: {node.log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError, ValueError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"LiteFS {node.role}: {what} within {timeout} s: {node.log_path.read_text()[-3000:]}")
        time.sleep(0.05)


class LiteFSPair:
    """A primary and a replica, static lease, each with LiteFS's proxy; ``litefs`` pinned to *cpu*."""

    def __init__(self, base: Path, cpu: int = -1) -> None:
        self.binary = find_litefs()
        self.cpu = cpu
        primary = Node("primary", PRIMARY_ID, base / "primary")
        replica = Node("replica", SELF_ID, base / "replica")
        self.nodes = {"primary": primary, "replica": replica}

    @property
    def primary(self) -> Node:
        return self.nodes["primary"]

    def launch(self, node: Node) -> None:
        assert self.binary is not None
        (node.root / "data").mkdir(parents=True, exist_ok=True)
        node.mount.mkdir(parents=True, exist_ok=True)
        config_path = node.root / "litefs.yml"
        config_path.write_text(json.dumps(node.config(self.primary), indent=2))  # JSON is YAML
        cmd = [self.binary, "mount", "-config", str(config_path)]
        if self.cpu >= 0:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]  # Go sizes GOMAXPROCS to the affinity: 1
        with open(node.log_path, "ab") as out:
            node.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)

    def start(self) -> LiteFSPair:
        reason = litefs_unavailable()
        if reason is not None:
            raise SystemExit(reason)
        primary, replica = self.primary, self.nodes["replica"]
        self.launch(primary)
        wait_until("not primary", lambda: primary.info()["isPrimary"] and mounted(primary.mount), primary)
        self.launch(replica)
        wait_until(
            "no primary known",
            lambda: replica.info().get("primary", {}).get("hostname") == primary.id and mounted(replica.mount),
            replica,
        )
        # The database the proxy tracks (proxy.db), created through the primary's mount.
        with contextlib.closing(sqlite3.connect(primary.mount / DATABASE)) as db:
            db.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, title TEXT)")
            db.execute("INSERT INTO items (title) VALUES ('hello')")
            db.commit()
        target = primary.position()
        assert target, "the primary has no position after a write"
        wait_until("did not replicate the database", lambda: replica.position() == target, replica)
        log(f"LiteFS {LITEFS_VERSION}: primary {primary.id}, replica {replica.id}, {DATABASE} at TXID {target}")
        return self

    def close(self) -> None:
        for node in reversed(self.nodes.values()):
            if node.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGTERM)
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(node.proc.pid, signal.SIGKILL)
                    node.proc.wait()
                node.proc = None
            if mounted(node.mount):
                tool = shutil.which("fusermount3") or "fusermount"
                subprocess.run([tool, "-u", "-z", str(node.mount)], check=False)

    def cpu_ticks(self) -> int:
        """CPU time (user + system, clock ticks) both ``litefs`` processes have used so far."""
        return sum(process_ticks(node.proc.pid) for node in self.nodes.values() if node.proc is not None)


def tcp_opens() -> int:
    """TCP connections opened so far in this network namespace (``ActiveOpens``, /proc/net/snmp)."""
    rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Tcp:")]
    return int(dict(zip(rows[0], rows[1], strict=True))["ActiveOpens"])


def process_ticks(pid: int) -> int:
    """utime + stime of process *pid* (all its threads), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), counted from the state (3)


@contextlib.contextmanager
def litefs_pair(cpu: int) -> Iterator[LiteFSPair]:
    with tempfile.TemporaryDirectory(prefix="litefs-side-by-side-") as tmp:
        pair = LiteFSPair(Path(tmp), cpu)
        try:
            yield pair.start()
        finally:
            pair.close()


# -- servers and checks -----------------------------------------------------------


def server_for(pair: LiteFSPair, stack: str, variant: str, mount: str, cpu: int) -> Server:
    node = pair.nodes[NODE_OF[mount]]
    server = Server(stack, "bare" if variant == "litefs-proxy" else variant, node.mount, cpu, machine_id=node.id)
    if variant == "litefs-proxy":
        server.port = node.target_port
    return server


def url_port(pair: LiteFSPair, variant: str, mount: str, server: Server) -> int:
    return pair.nodes[NODE_OF[mount]].proxy_port if variant == "litefs-proxy" else server.port


def check(stack: str, variant: str, mount: str, method: str, port: int) -> dict[str, str]:
    """One request as wrk will send it; raises unless the answer is what the row claims. Its headers."""
    status, headers, body = http_request(port, method)
    where = f"{stack} {variant} {mount} {method}: {status} {headers} {body[:80]!r}"
    replays = variant != "bare" and mount == "replica" and method == "POST"
    # litefs-route and the naive middleware answer a replay with 409; LiteFS's proxy with 200.
    expected = (200 if variant == "litefs-proxy" else 409) if replays else 200
    if status != expected or replays != ("fly-replay" in headers):
        raise RuntimeError(f"unexpected answer, {where}")
    if replays and headers["fly-replay"].split(";")[0] != f"instance={PRIMARY_ID}":
        raise RuntimeError(f"wrong replay target, {where}")
    if variant == "litefs-proxy" and replays and body:
        raise RuntimeError(f"LiteFS's proxy called the app on a replica write, {where}")
    if not replays and body != b"Hello, world!":
        raise RuntimeError(f"the app did not answer, {where}")
    if variant == "route":
        node_id = PRIMARY_ID if mount == "primary" else SELF_ID
        if headers.get("fly-instance") != node_id or headers.get("fly-primary-instance") != PRIMARY_ID:
            raise RuntimeError(f"litefs-route did not tag the response, {where}")
    return headers


def observe_proxy(pair: LiteFSPair, stack: str) -> list[str]:
    """What LiteFS's proxy answers (one request each, not measured), for the report."""
    lines = []
    for node_role, method in (("primary", "GET"), ("primary", "POST"), ("replica", "GET"), ("replica", "POST")):
        node = pair.nodes[node_role]
        with Server(stack, "bare", node.mount, -1, machine_id=node.id, port=node.target_port).running():
            status, headers, body = http_request(node.proxy_port, method)
        shown = [f"`{k}: {v}`" for k, v in headers.items() if k in ("fly-replay", "set-cookie", "content-length")]
        lines.append(f"| {stack} | {node_role} {method} | {status} | {'<br>'.join(shown)} | {len(body)} bytes |")
    return lines


# -- the wrk section ------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    wrk: WrkResult
    app_us: float  # CPU µs per request of the process running the app
    litefs_us: float  # CPU µs per request of the two litefs processes
    opens: float  # TCP connections opened per request (wrk's and the proxy's)


Key = tuple[str, str, str, str]  # stack, variant, mount, method


def throughput(cfg: WrkConfig, pair: LiteFSPair) -> dict[Key, list[Sample]]:
    results: dict[Key, list[Sample]] = {}
    for r in range(cfg.rounds):
        for stack in STACKS:
            for variant in rotated(VARIANTS, r):
                by_mount: dict[str, list[str]] = {}
                for mount, method in SCENARIOS[variant]:
                    by_mount.setdefault(mount, []).append(method)
                for mount, methods in by_mount.items():
                    with server_for(pair, stack, variant, mount, cfg.server_cpu).running() as server:
                        port = url_port(pair, variant, mount, server)
                        url = f"http://127.0.0.1:{port}/"
                        for method in methods:
                            check(stack, variant, mount, method, port)
                            warm_up(cfg, url, method, stack)
                            app0, lfs0, opens0 = process_ticks(server.app_pid()), pair.cpu_ticks(), tcp_opens()
                            res = measure(cfg, url, method, stack)
                            app1, lfs1, opens1 = process_ticks(server.app_pid()), pair.cpu_ticks(), tcp_opens()
                            n = max(res.requests, 1)
                            us = 1e6 / CLK_TCK / n
                            sample = Sample(res, (app1 - app0) * us, (lfs1 - lfs0) * us, (opens1 - opens0) / n)
                            results.setdefault((stack, variant, mount, method), []).append(sample)
                            log_cell(f"round {r + 1}/{cfg.rounds} {stack} {variant:12} {mount:7} {method:4}", res)
    return results


# -- the valgrind section -----------------------------------------------------------


@dataclass(frozen=True)
class Counted:
    stack: str
    variant: str
    mount: str
    method: str
    instructions_per_request: float


def instructions(
    pair: LiteFSPair, n: int, warmup: int, jobs: int, cells: list[tuple[str, str, str, str]]
) -> list[Counted]:
    """The Python server's instructions per request, cells run *jobs* at a time (counts do not depend on load)."""
    ensure_tool("valgrind")
    locks = {node.target_port: threading.Lock() for node in pair.nodes.values()}

    def one(stack: str, variant: str, mount: str, method: str, out_dir: Path) -> Counted:
        node = pair.nodes[NODE_OF[mount]]
        where = Where(machine_id=node.id)
        lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if variant == "litefs-proxy":
            where = Where(machine_id=node.id, port=node.target_port, via=node.proxy_port)
            lock = locks[node.target_port]  # one server at a time on the proxy's target port
        with lock:
            server_variant = "bare" if variant == "litefs-proxy" else variant
            per_request = count_instructions(stack, server_variant, node.mount, method, n, warmup, out_dir, where)
        log(f"instructions {stack} {variant} {mount} {method}: {per_request:,.0f} per request")
        return Counted(stack, variant, mount, method, per_request)

    with tempfile.TemporaryDirectory(prefix="litefs-callgrind-") as tmp, ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(one, *cell, Path(tmp)) for cell in cells]
        return [future.result() for future in futures]


# -- the report -------------------------------------------------------------------


def source() -> str:
    """Which litefs-route was measured: the commit, and whether the package had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "litefs_route"], cwd=ROOT, capture_output=True)
    except OSError:
        head = None
    if head is None or head.returncode != 0:
        return f"litefs-route from {ROOT} (not a git checkout)"
    return f"litefs-route at {head.stdout.strip()}" + (" + uncommitted changes" if dirty.stdout.strip() else "")


def what(variant: str, mount: str, method: str) -> str:
    text = method if mount == "-" else f"{mount} {method}"
    if variant != "bare" and mount == "replica" and method == "POST":
        text += " → 200 replay" if variant == "litefs-proxy" else " → 409 replay"
    return text


def rows() -> Iterator[tuple[str, str, str]]:
    for variant in VARIANTS:
        for mount, method in SCENARIOS[variant]:
            yield variant, mount, method


def summary(tput: dict[Key, list[Sample]]) -> list[str]:
    """Both stacks in one table: req/s (vs the bare GET), p50, CPU µs per request in the app + in LiteFS."""
    head, rule = "| variant | request |", "|---|---|"
    for stack in STACKS:
        head += f" {stack} req/s (vs bare GET) | {stack} p50 ms | {stack} CPU µs/req, app + LiteFS |"
        rule += "---:|---:|---:|"
    out = [head, rule]
    for variant, mount, method in rows():
        line = f"| {LABEL[variant]} | {what(variant, mount, method)} |"
        for stack in STACKS:
            samples = tput.get((stack, variant, mount, method), [])
            if not samples:
                line += " | | |"
                continue
            base = med([s.wrk.rps for s in tput[(stack, "bare", "-", "GET")]])
            rps = med([s.wrk.rps for s in samples])
            app, lfs = med([s.app_us for s in samples]), med([s.litefs_us for s in samples])
            p50 = med([s.wrk.p50_ms for s in samples])
            line += f" {rps:,.0f} ({rps / base:.0%}) | {p50:.2f} | {app:.0f} + {lfs:.0f} |"
        out.append(line)
    return out


def report(
    cfg: WrkConfig,
    litefs_cpu: int,
    tput: dict[Key, list[Sample]],
    counted: list[Counted],
    observed: list[str],
    elapsed: float,
    command: str,
) -> str:
    pinned = f"CPU {litefs_cpu}" if litefs_cpu >= 0 else "no CPU (unpinned)"
    out = [
        "# litefs-route side by side with LiteFS's proxy, on real LiteFS mounts",
        "",
        f"Command: `{command}`.  ",
        f"Machine: {machine()}.  ",
        f"Software: {versions()}, LiteFS {LITEFS_VERSION}; {source()}.  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M %Z')}, {elapsed / 60:.1f} min; {cfg.rounds} interleaved rounds x "
        f"{cfg.seconds:g} s per cell (after {cfg.warmup:g} s warm-up); server pinned to CPU {cfg.server_cpu}, "
        f"both `litefs mount` processes to {pinned}, wrk (-t1) to CPU {cfg.wrk_cpu}; ASGI wrk "
        f"-c{cfg.asgi_connections}, WSGI wrk -c{cfg.wsgi_connections}. Medians over the rounds; the range is "
        "min-max. A static-lease cluster of two nodes on 127.0.0.1, the database created on the primary and "
        "replicated before measuring. The machine may be shared with other work: read the ranges.",
        "",
        "CPU µs/req: CPU time (user + system, `/proc/<pid>/stat`) over the measured run divided by its "
        "requests, for the process running the app and for LiteFS (both `litefs` processes): the naive "
        "middleware's FUSE round trips and the proxy's HTTP hop are work done in LiteFS. Clock-tick resolution, "
        "and a saturated server: read them as ±10 %. TCP conns/req: connections opened per request in this "
        "network namespace (`ActiveOpens`, /proc/net/snmp: wrk's and the proxy's; other processes add ~0.02).",
        "",
    ]
    if tput:
        out += ["## Summary", "", *summary(tput), ""]
    for stack in STACKS if tput else ():
        server = "uvicorn 1 worker + Starlette" if stack == "ASGI" else "gunicorn -w1 sync + Flask"
        out += [
            f"## {stack}: {server}, hello-world",
            "",
            "| variant | request | req/s (median) | range | vs bare GET | p50 ms | p99 ms "
            "| CPU µs/req: app | CPU µs/req: LiteFS | TCP conns/req |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        base = med([s.wrk.rps for s in tput[(stack, "bare", "-", "GET")]])
        for variant, mount, method in rows():
            samples = tput.get((stack, variant, mount, method), [])
            if samples:
                out.append(
                    f"| {LABEL[variant]} | {what(variant, mount, method)} | "
                    f"{wrk_columns([s.wrk for s in samples], base)} | {med([s.app_us for s in samples]):.0f} | "
                    f"{med([s.litefs_us for s in samples]):.0f} | {med([s.opens for s in samples]):.2f} |"
                )
        out.append("")
    if counted:
        out += [
            "## Instructions per request of the Python server (valgrind)",
            "",
            "`bench/instructions.py`'s method (callgrind, warm-up subtracted, one request at a time), on the real "
            "mounts. User-space instructions of the Python process only. Not counted: LiteFS's proxy (Go, another "
            "process; valgrind does not run Go reliably and this machine's `perf` has no hardware counters: its "
            "CPU µs/req above is its cost), and the naive middleware (its cost is the `open`/`read` system calls "
            "and the FUSE work they cause in LiteFS, which callgrind does not see: its CPU µs/req above is). "
            "On a replica write LiteFS's proxy answers without calling the app: 0 instructions in Python.",
            "",
            "| stack | variant | request | instructions/request | vs bare GET |",
            "|---|---|---|---:|---:|",
        ]
        for cell in counted:
            bare = next(c for c in counted if c.stack == cell.stack and c.variant == "bare")
            delta = cell.instructions_per_request - bare.instructions_per_request
            out.append(
                f"| {cell.stack} | {LABEL[cell.variant]} | {what(cell.variant, cell.mount, cell.method)} | "
                f"{cell.instructions_per_request:,.0f} | {'—' if cell is bare else f'{delta:+,.0f}'} |"
            )
        out.append("")
    if observed:
        out += [
            "## What LiteFS's proxy answered (one request each, bare app behind it)",
            "",
            "| stack | request | status | headers (selected) | body |",
            "|---|---|---:|---|---|",
            *observed,
            "",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    WrkConfig.add_arguments(parser)
    parser.add_argument("--litefs-cpu", type=int, help="pin both litefs processes here (default: --server-cpu)")
    parser.add_argument("--instructions-n", type=int, default=300, help="requests counted per valgrind cell")
    parser.add_argument("--instructions-warmup", type=int, default=100, help="requests before counting")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind cells run at a time (default 2)")
    parser.add_argument("--only", default="throughput,instructions", help="comma-separated sections")
    parser.add_argument(
        "--quick", action="store_true", help="1 round x 2 s; valgrind: the ASGI primary GETs, 50 requests"
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "litefs.md")
    args = parser.parse_args(argv)
    command = " ".join(["python bench/litefs_side_by_side.py", *(sys.argv[1:] if argv is None else argv)])
    cells = [(stack, *cell) for stack in STACKS for cell in INSTRUCTION_CELLS]
    if args.quick:
        args.rounds, args.seconds, args.instructions_n, args.instructions_warmup = 1, 2, 50, 50
        cells = [cell for cell in cells if cell[0] == "ASGI" and cell[2] != "replica"]
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        args.server_cpu = args.wrk_cpu = args.litefs_cpu = -1
    litefs_cpu = args.server_cpu if args.litefs_cpu is None else args.litefs_cpu
    cfg = WrkConfig(**WrkConfig.fields(args))
    sections = set(args.only.split(","))
    ensure_tool("wrk")
    # A SIGTERM runs the clean-up too (stop LiteFS, unmount), as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    t0 = time.monotonic()
    with litefs_pair(litefs_cpu) as pair:
        observed = [line for stack in STACKS for line in observe_proxy(pair, stack)]
        tput = throughput(cfg, pair) if "throughput" in sections else {}
        counted = []
        if "instructions" in sections:
            counted = instructions(pair, args.instructions_n, args.instructions_warmup, max(1, args.jobs), cells)
    text = report(cfg, litefs_cpu, tput, counted, observed, time.monotonic() - t0, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    log(f"written to {args.out}")


if __name__ == "__main__":
    main()
