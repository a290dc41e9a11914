"""One command, one machine: litefs-route against a bare app and a naive middleware.

    python bench/run.py            # full run (~20 minutes), writes bench/results/latest.md
    python bench/run.py --quick    # a smoke run (1 round x 2 s, smaller memory run)

Sections (see bench/README.md for the method and the caveats):

1. Throughput and latency with wrk: uvicorn + Starlette and gunicorn (sync)
   + Flask, 1 worker each, for the bare app, the naive middleware and
   litefs-route, on a primary GET, a replica GET and a replica POST (replayed),
   in interleaved rounds; medians. The server is pinned to CPU 0, wrk to CPU 1.
   A "floor" variant only adds the two tag headers: what any middleware that
   tags responses costs on these servers.
2. Instructions per request under valgrind (``bench/instructions.py``): the
   same comparison without the machine's noise.
3. Decision cost in-process (``bench/inproc.py``), min-of-N.
4. State reads per second of the mount under three request rates.
5. Resident memory before and after 100k requests, bare app vs litefs-route.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench.mount import PRIMARY_ID, SELF_ID, make_mounts  # noqa: E402
from litefs_route_devcluster import free_port  # noqa: E402  (reserved: the server binds it later)

POST_LUA = BENCH / "wrk" / "post.lua"
CACHE_TTL = 1.0  # litefs-route's default, which the servers use
PY = sys.executable

STACKS = ("ASGI", "WSGI")
VARIANTS = ("bare", "floor", "naive", "route")
VARIANT_LABEL = {
    "bare": "bare app",
    "floor": "floor (only adds the two tag headers)",
    "naive": "naive (reads .primary per request)",
    "route": "litefs-route",
}
# (mount, method): the bare app does not look at the mount, so it runs once, on GET and POST.
SCENARIOS = {
    "bare": (("-", "GET"), ("-", "POST")),
    "floor": (("-", "GET"),),
    "naive": (("primary", "GET"), ("replica", "GET"), ("replica", "POST")),
    "route": (("primary", "GET"), ("replica", "GET"), ("replica", "POST")),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- wrk ------------------------------------------------------------------


def ensure_tool(binary: str) -> str:
    """The path of *binary* (wrk, valgrind), installed from Debian's packages if missing."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit(f"{binary} is not installed: apt-get install {binary} (or run as root: this script does)")
    log(f"installing {binary} with apt-get")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-qq", binary], check=True, env=env)
    found = shutil.which(binary)
    if not found:
        raise SystemExit(f"apt-get install {binary} did not provide a {binary} binary")
    return found


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors (connect/read/write/timeout)
    non2xx: int


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"([0-9]+) requests in", out)
    if not (rps and p50 and p99 and total):
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    # gunicorn's sync worker closes every connection: wrk counts those closes as
    # "read" errors although each request was answered, so read errors are not counted.
    errors = 0
    if socket_errors:
        errors = int(socket_errors[1]) + int(socket_errors[3]) + int(socket_errors[4])
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(float(rps[1]), _ms(p50[1]), _ms(p99[1]), int(total[1]), errors, int(non2xx[1]) if non2xx else 0)


def wrk(url: str, *, method: str, connections: int, seconds: float, cpu: int) -> WrkResult:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if method == "POST":
        cmd += ["-s", str(POST_LUA)]
    cmd.append(url)
    if cpu >= 0:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return parse_wrk(out)


# -- servers ----------------------------------------------------------------


def http_request(port: int, method: str, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        body = b"title=hello&done=0" if method == "POST" else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@dataclass
class Server:
    stack: str
    variant: str
    litefs_dir: Path
    cpu: int
    port: int = field(default_factory=free_port)
    #: FLY_MACHINE_ID (on a real LiteFS cluster: the node's lease hostname).
    machine_id: str = SELF_ID
    proc: subprocess.Popen[bytes] | None = None
    #: Prefixed to the command (bench/instructions.py runs servers under valgrind).
    wrapper: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 20.0
    stop_timeout: float = 10.0

    def command(self) -> list[str]:
        if self.stack == "ASGI":
            cmd = [PY, "-m", "uvicorn", "bench.apps.asgi_app:app", "--host", "127.0.0.1", "--port", str(self.port)]
            cmd += ["--workers", "1", "--log-level", "warning", "--no-access-log"]
        else:
            cmd = [PY, "-m", "gunicorn", "bench.apps.wsgi_app:app", "-b", f"127.0.0.1:{self.port}"]
            cmd += ["-w", "1", "-k", "sync", "--log-level", "warning"]
            if self.wrapper:  # valgrind: a worker 50x slower must not be killed as hung
                cmd += ["--timeout", "600"]
        cmd = [*self.wrapper, *cmd]
        return ["taskset", "-c", str(self.cpu), *cmd] if self.cpu >= 0 else cmd

    def start(self) -> None:
        env = {
            **os.environ,
            "BENCH_VARIANT": self.variant,
            "LITEFS_DIR": str(self.litefs_dir),
            "FLY_MACHINE_ID": self.machine_id,
            "PYTHONPATH": str(ROOT),
            **self.extra_env,
        }
        stderr = subprocess.DEVNULL if self.wrapper else None
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.stack} {self.variant} server exited with {self.proc.returncode}")
            with contextlib.suppress(OSError):
                if http_request(self.port, "GET")[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.stack} {self.variant} server did not answer")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def app_pid(self) -> int:
        """The process that runs the app: uvicorn itself, gunicorn's one worker."""
        assert self.proc is not None
        if self.stack == "ASGI":
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        if len(children) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {children}")
        return int(children[0])

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.app_pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def reads(self) -> int:
        status, _, body = http_request(self.port, "GET", "/__reads")
        assert status == 200, status
        return int(body)

    def check(self, mount: str, method: str) -> None:
        """The server does what the row claims (replay on a replica POST, tags)."""
        status, headers, _ = http_request(self.port, method)
        replays = self.variant != "bare" and mount == "replica" and method == "POST"
        expected = 409 if replays else 200
        if status != expected or replays != ("fly-replay" in headers):
            raise RuntimeError(f"{self.stack} {self.variant} {mount} {method}: {status} {headers}")
        if replays and headers["fly-replay"].split(";")[0] != f"instance={PRIMARY_ID}":
            raise RuntimeError(f"wrong replay target: {headers['fly-replay']}")
        if self.variant == "route" and headers.get("fly-instance") != SELF_ID:
            raise RuntimeError(f"litefs-route did not tag the response: {headers}")

    @contextlib.contextmanager
    def running(self) -> Iterator[Server]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


# -- the sections -------------------------------------------------------------


@dataclass(frozen=True)
class WrkConfig:
    """How the wrk cells run (also used by ``bench/litefs_side_by_side.py``)."""

    rounds: int
    seconds: float
    warmup: float
    asgi_connections: int
    wsgi_connections: int
    server_cpu: int
    wrk_cpu: int

    def connections(self, stack: str) -> int:
        return self.asgi_connections if stack == "ASGI" else self.wsgi_connections

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The command-line options of the wrk cells, the same in every script that runs them."""
        parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the wrk section (default 3)")
        parser.add_argument("--seconds", type=float, default=5, help="seconds per measured wrk run (default 5)")
        parser.add_argument("--warmup", type=float, default=1, help="seconds of wrk warm-up per cell (default 1)")
        parser.add_argument("--asgi-connections", type=int, default=64, help="wrk -c for uvicorn (default 64)")
        parser.add_argument("--wsgi-connections", type=int, default=4, help="wrk -c for gunicorn sync (default 4)")
        parser.add_argument("--server-cpu", type=int, default=0, help="pin servers here (-1: no pinning)")
        parser.add_argument("--wrk-cpu", type=int, default=1, help="pin wrk here (-1: no pinning)")

    @staticmethod
    def fields(args: argparse.Namespace) -> dict[str, Any]:
        """This class's fields from the options :meth:`add_arguments` defined."""
        return {name: getattr(args, name) for name in WrkConfig.__dataclass_fields__}


@dataclass(frozen=True)
class Config(WrkConfig):
    memory_requests: int
    inproc_rounds: int
    inproc_n: int
    instr_n: int


Key = tuple[str, str, str, str]  # stack, variant, mount, method
T = TypeVar("T")


def rotated(items: Sequence[T], r: int) -> list[T]:
    """*items* starting at the *r*-th: rotate the order each round so that no item always runs first or last."""
    return [items[(i + r) % len(items)] for i in range(len(items))]


def warm_up(cfg: WrkConfig, url: str, method: str, stack: str) -> None:
    """``cfg.warmup`` seconds of wrk, discarded."""
    wrk(url, method=method, connections=cfg.connections(stack), seconds=cfg.warmup, cpu=cfg.wrk_cpu)


def measure(cfg: WrkConfig, url: str, method: str, stack: str) -> WrkResult:
    """``cfg.seconds`` seconds of wrk, measured."""
    return wrk(url, method=method, connections=cfg.connections(stack), seconds=cfg.seconds, cpu=cfg.wrk_cpu)


def warm_and_measure(cfg: WrkConfig, url: str, method: str, stack: str) -> WrkResult:
    """One cell: the warm-up, then the measured run."""
    warm_up(cfg, url, method, stack)
    return measure(cfg, url, method, stack)


def log_cell(prefix: str, res: WrkResult) -> None:
    if res.errors:
        log(f"warning: {res.errors} socket errors (connect/timeout) in this cell")
    log(f"{prefix} {res.rps:9.0f} req/s  p50 {res.p50_ms:.3f} ms  p99 {res.p99_ms:.3f} ms")


def throughput(cfg: Config, mounts: dict[str, Path]) -> dict[Key, list[WrkResult]]:
    results: dict[Key, list[WrkResult]] = {}
    plan = [(stack, variant) for stack in STACKS for variant in VARIANTS]
    for r in range(cfg.rounds):
        order = [(stack, variant) for stack in STACKS for variant in rotated(VARIANTS, r)]
        assert sorted(order) == sorted(plan)
        for stack, variant in order:
            by_mount: dict[str, list[str]] = {}
            for mount, method in SCENARIOS[variant]:
                by_mount.setdefault(mount, []).append(method)
            for mount, methods in by_mount.items():
                litefs_dir = mounts["replica" if mount == "-" else mount]
                with Server(stack, variant, litefs_dir, cfg.server_cpu).running() as server:
                    for method in methods:
                        server.check(mount, method)
                        res = warm_and_measure(cfg, f"http://127.0.0.1:{server.port}/", method, stack)
                        results.setdefault((stack, variant, mount, method), []).append(res)
                        log_cell(f"round {r + 1}/{cfg.rounds} {stack} {variant:5} {mount:7} {method:4}", res)
    return results


def instructions(cfg: Config) -> list[dict[str, object]]:
    cmd = [PY, str(BENCH / "instructions.py"), "--json", "-n", str(cfg.instr_n)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    rows: list[dict[str, object]] = json.loads(out)
    return rows


def inproc(cfg: Config) -> list[dict[str, object]]:
    cmd = [PY, str(BENCH / "inproc.py"), "--json", "--rounds", str(cfg.inproc_rounds), "-n", str(cfg.inproc_n)]
    cmd += ["--cpu", str(cfg.server_cpu)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    rows: list[dict[str, object]] = json.loads(out)
    return rows


@dataclass(frozen=True)
class ReadsRow:
    stack: str
    load: str
    rps: float
    reads_per_s: float
    reads: int
    seconds: float

    @property
    def flat(self) -> bool:
        """At most one read per cache_ttl (1 s) of the window, plus one for
        the window's edge (a read just after the window opened and one just
        before it closed: 6 reads in 5 s is still once a second)."""
        return self.reads <= self.seconds / CACHE_TTL + 1


def paced(port: int, rate: float, seconds: float) -> int:
    """A client at about *rate* requests/s (a quiet hour): returns the count."""
    sent, t0 = 0, time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        http_request(port, "GET")
        sent += 1
        time.sleep(max(0.0, t0 + sent / rate - now - 0.0005))
    return sent


def state_reads(cfg: Config, mounts: dict[str, Path]) -> list[ReadsRow]:
    rows = []
    for stack in STACKS:
        with Server(stack, "route", mounts["replica"], cfg.server_cpu).running() as server:
            url = f"http://127.0.0.1:{server.port}/"
            wrk(url, method="GET", connections=cfg.connections(stack), seconds=cfg.warmup, cpu=cfg.wrk_cpu)
            loads: list[tuple[str, int | None]] = [("paced client, ~50 req/s", None), ("wrk -c1", 1)]
            loads.append((f"wrk -c{cfg.connections(stack)}", cfg.connections(stack)))
            if stack == "WSGI":
                loads.append(("wrk -c64", 64))
            for label, conns in loads:
                before, t0 = server.reads(), time.monotonic()
                if conns is None:
                    count = paced(server.port, 50, cfg.seconds)
                else:
                    count = wrk(url, method="GET", connections=conns, seconds=cfg.seconds, cpu=cfg.wrk_cpu).requests
                elapsed = time.monotonic() - t0
                reads = server.reads() - before
                rows.append(ReadsRow(stack, label, count / elapsed, reads / elapsed, reads, elapsed))
                log(f"reads {stack} {label}: {count / elapsed:.0f} req/s, {reads / elapsed:.2f} reads/s")
    return rows


@dataclass(frozen=True)
class MemoryRow:
    stack: str
    variant: str
    rss_warm_kib: int
    rss_after_kib: int
    requests: int


def drive(server: Server, cfg: Config, total: int) -> int:
    """At least *total* requests, alternating GET and POST chunks of wrk."""
    url, done, i = f"http://127.0.0.1:{server.port}/", 0, 0
    while done < total:
        method = ("GET", "POST")[i % 2]
        done += wrk(url, method=method, connections=cfg.connections(server.stack), seconds=2, cpu=cfg.wrk_cpu).requests
        i += 1
    return done


def memory(cfg: Config, mounts: dict[str, Path]) -> list[MemoryRow]:
    rows = []
    for stack in STACKS:
        for variant in ("bare", "route"):
            with Server(stack, variant, mounts["replica"], cfg.server_cpu).running() as server:
                drive(server, cfg, cfg.memory_requests // 10)
                warm = server.rss_kib()
                done = drive(server, cfg, cfg.memory_requests)
                after = server.rss_kib()
                rows.append(MemoryRow(stack, variant, warm, after, done))
                log(f"memory {stack} {variant}: {warm} KiB -> {after} KiB after {done} requests")
    return rows


# -- the report -----------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values)


def wrk_columns(cell: list[WrkResult], base_rps: float) -> str:
    """The Markdown columns ``req/s (median) | range | vs base | p50 ms | p99 ms`` of a cell's rounds."""
    rps = [r.rps for r in cell]
    p50, p99 = med([r.p50_ms for r in cell]), med([r.p99_ms for r in cell])
    ratio = med(rps) / base_rps
    return f"{med(rps):,.0f} | {min(rps):,.0f} to {max(rps):,.0f} | {ratio:.1%} | {p50:.3f} | {p99:.3f}"


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 1024**2:.0f} GiB"
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem} RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def versions() -> str:
    from importlib.metadata import version

    names = ("litefs-route", "uvicorn", "starlette", "gunicorn", "flask")
    parts = []
    for name in names:
        try:
            parts.append(f"{name} {version(name)}")
        except Exception:
            parts.append(f"{name} ?")
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return ", ".join(parts) + f", {wrk_version.strip() or 'wrk'}"


def report(
    cfg: Config,
    tput: dict[Key, list[WrkResult]],
    instr: list[dict[str, object]],
    decision: list[dict[str, object]],
    reads: list[ReadsRow],
    mem: list[MemoryRow],
    elapsed: float,
) -> str:
    out = [
        "# litefs-route benchmark",
        "",
        f"Machine: {machine()}.  ",
        f"Software: {versions()}.  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M %Z')}, {elapsed / 60:.1f} min; {cfg.rounds} interleaved rounds x "
        f"{cfg.seconds:g} s per cell (after {cfg.warmup:g} s warm-up); server pinned to CPU {cfg.server_cpu}, "
        f"wrk (-t1) to CPU {cfg.wrk_cpu}; ASGI wrk -c{cfg.asgi_connections}, WSGI wrk -c{cfg.wsgi_connections}. "
        "Medians over the rounds; the range is min-max. The machine was shared with other work: read the ranges.",
        "",
    ]
    goals: list[tuple[str, bool, str]] = []
    for stack in STACKS if tput else ():
        server = "uvicorn 1 worker + Starlette" if stack == "ASGI" else "gunicorn -w1 sync + Flask"
        out += [
            f"## {stack}: {server}, hello-world",
            "",
            "| variant | request | req/s (median) | range | vs bare GET | p50 ms | p99 ms |",
            "|---|---|---:|---|---:|---:|---:|",
        ]
        bare_get = tput[(stack, "bare", "-", "GET")]
        base = med([r.rps for r in bare_get])
        for variant in VARIANTS:
            for mount, method in SCENARIOS[variant]:
                cell = tput.get((stack, variant, mount, method), [])
                if not cell:
                    continue
                what = f"{method}" if mount == "-" else f"{mount} {method}"
                if variant != "bare" and mount == "replica" and method == "POST":
                    what += " → 409 replay"
                out.append(f"| {VARIANT_LABEL[variant]} | {what} | {wrk_columns(cell, base)} |")
        route_primary = med([r.rps for r in tput[(stack, "route", "primary", "GET")]])
        route_post = tput[(stack, "route", "replica", "POST")]
        ratio = route_primary / base
        goals.append((f"{stack}: litefs-route primary GET ≥ 97% of bare GET (wrk)", ratio >= 0.97, f"{ratio:.1%}"))
        post_rps, post_p50 = med([r.rps for r in route_post]), med([r.p50_ms for r in route_post])
        base_p50 = med([r.p50_ms for r in bare_get])
        goals.append(
            (
                f"{stack}: replica POST replayed at least as fast as bare GET (wrk)",
                post_rps >= base and post_p50 <= base_p50,
                f"{post_rps / base:.1%} of the req/s, p50 {post_p50:.3f} vs {base_p50:.3f} ms",
            )
        )
        out.append("")

    if instr:
        from bench.instructions import Cell, markdown

        cells = [Cell(**cell) for cell in instr]  # type: ignore[arg-type]
        out += [
            "## Instructions per request (valgrind), the noise-free throughput ratio",
            "",
            f"`bench/instructions.py`: each server under callgrind, {cfg.instr_n} sequential requests counted "
            "(a run with the warm-up only subtracted); the ratio bare/this is the throughput ratio of a "
            "CPU-bound server without the machine's noise. callgrind counts user-space instructions: the "
            "naive middleware's two system calls per request (open, read) are not in its count.",
            "",
            markdown(cells),
            "",
        ]
        for stack in STACKS:
            by = {(c.variant, c.mount, c.method): c.instructions_per_request for c in cells if c.stack == stack}
            if not by:
                continue
            bare = by[("bare", "-", "GET")]
            ratio = bare / by[("route", "primary", "GET")]
            floor = bare / by[("floor", "-", "GET")]
            goals.append(
                (
                    f"{stack}: litefs-route primary GET ≥ 97% of bare GET (instructions)",
                    ratio >= 0.97,
                    f"{ratio:.1%} (the floor, tags only: {floor:.1%})",
                )
            )
            replay = bare / by[("route", "replica", "POST")]
            goals.append(
                (
                    f"{stack}: replica POST replayed at least as fast as bare GET (instructions)",
                    replay >= 1,
                    f"{replay:.1%}",
                )
            )
    if decision:
        from bench.inproc import Row
        from bench.inproc import markdown as decision_table

        drows = [Row(**row) for row in decision]  # type: ignore[arg-type]
        out += [
            "## Decision cost, in-process (no server): µs per request",
            "",
            f"`bench/inproc.py`: {cfg.inproc_rounds} interleaved rounds x {cfg.inproc_n} calls per case, pinned to "
            f"CPU {cfg.server_cpu}, cache warm; Δ = the case minus the trivial inner app alone on the same request "
            "(min: best round, median: typical round).",
            "",
            decision_table(drows),
        ]
        for drow in drows:
            if drow.name.startswith("litefs-route"):
                goals.append(
                    (
                        f"{drow.stack}: decision path ≤ 5 µs ({drow.name[len('litefs-route, ') :]})",
                        drow.delta_min_us <= 5,
                        f"{drow.delta_min_us:.2f} µs (min)",
                    )
                )
    if reads:
        out += [
            "",
            "## State reads under load (litefs-route, replica mount, cache_ttl=1)",
            "",
            "| stack | load | req/s | mount reads | in seconds | reads/s |",
            "|---|---|---:|---:|---:|---:|",
        ]
    for rrow in reads:
        out.append(
            f"| {rrow.stack} | {rrow.load} | {rrow.rps:,.0f} | {rrow.reads} | {rrow.seconds:.1f} | "
            f"{rrow.reads_per_s:.2f} |"
        )
    for stack in STACKS:
        rows = [rrow for rrow in reads if rrow.stack == stack]
        if rows:
            most = max(rows, key=lambda rrow: rrow.reads_per_s)
            goals.append(
                (
                    f"{stack}: mount reads flat (once per cache_ttl, whatever the rate)",
                    all(rrow.flat for rrow in rows),
                    f"at most {most.reads} reads in {most.seconds:.1f} s ({most.load})",
                )
            )
    if mem:
        out += [
            "",
            "## Resident memory (VmRSS of the process running the app), replica mount, GET/POST alternating",
            "",
            "| stack | variant | RSS after warm-up | RSS after N more requests | N | growth |",
            "|---|---|---:|---:|---:|---:|",
        ]
    by_stack: dict[str, dict[str, int]] = {}
    for mrow in mem:
        growth = mrow.rss_after_kib - mrow.rss_warm_kib
        by_stack.setdefault(mrow.stack, {})[mrow.variant] = growth
        out.append(
            f"| {mrow.stack} | {VARIANT_LABEL[mrow.variant]} | {mrow.rss_warm_kib:,} KiB | "
            f"{mrow.rss_after_kib:,} KiB | {mrow.requests:,} | {growth:+,} KiB |"
        )
    for stack, growths in by_stack.items():
        if "route" in growths and "bare" in growths:
            extra = growths["route"] - growths["bare"]
            goals.append(
                (
                    f"{stack}: no memory growth (vs bare)",
                    extra <= 256,
                    f"{growths['route']:+,} KiB vs bare {growths['bare']:+,} KiB",
                )
            )
    out += ["", "## Goals", "", "| goal | met? | measured |", "|---|---|---|"]
    for goal, met, measured in goals:
        out.append(f"| {goal} | {'yes' if met else '**no**'} | {measured} |")
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    WrkConfig.add_arguments(parser)
    parser.add_argument("--memory-requests", type=int, default=100_000, help="requests between RSS readings")
    parser.add_argument("--inproc-rounds", type=int, default=31)
    parser.add_argument("--inproc-n", type=int, default=5000)
    parser.add_argument("--instructions-n", type=int, default=500, help="requests counted per valgrind cell")
    parser.add_argument(
        "--only", default="throughput,instructions,decision,reads,memory", help="comma-separated sections"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round x 2 s, 20k memory requests")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "latest.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.memory_requests, args.inproc_rounds = 1, 2, 20_000, 5
        args.instructions_n = 100
    if (os.cpu_count() or 1) < 2:
        args.server_cpu = args.wrk_cpu = -1
    cfg = Config(
        **WrkConfig.fields(args), memory_requests=args.memory_requests, inproc_rounds=args.inproc_rounds,
        inproc_n=args.inproc_n, instr_n=args.instructions_n,
    )  # fmt: skip
    sections = set(args.only.split(","))
    ensure_tool("wrk")
    if "instructions" in sections:
        ensure_tool("valgrind")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="litefs-bench-") as tmp:
        primary, replica = make_mounts(Path(tmp))
        mounts = {"primary": primary, "replica": replica}
        decision = inproc(cfg) if "decision" in sections else []
        tput = throughput(cfg, mounts) if "throughput" in sections else {}
        instr = instructions(cfg) if "instructions" in sections else []
        reads = state_reads(cfg, mounts) if "reads" in sections else []
        mem = memory(cfg, mounts) if "memory" in sections else []
    text = report(cfg, tput, instr, decision, reads, mem, time.monotonic() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    log(f"written to {args.out}")


if __name__ == "__main__":
    main()
