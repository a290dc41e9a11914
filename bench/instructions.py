"""Instructions per request, counted by valgrind: the noise-free ratio.

wrk's requests/s on a shared 2-core VM vary by ±20 % from one run of the
same server to the next, far more than the 3 % the throughput goal is about.
Instruction counts do not: ``valgrind --tool=callgrind`` counts the
instructions the server process executes, the same to within ~0.3 % run to
run, whatever else the machine is doing. For a CPU-bound server on one core
(uvicorn and gunicorn's worker here run at 100 % of their core under wrk)
requests/s is inversely proportional to the work per request, so
``bare / variant`` instructions per request is the throughput ratio without
the noise (it ignores cache and branch effects, which a middleware of a few
hundred bytecodes barely moves).

Method, per cell: run the real server (uvicorn + Starlette, gunicorn sync
+ Flask; the same apps as ``run.py``) under callgrind twice, once serving
``--warmup`` requests and once ``--warmup`` + ``-n``, one request at a time
from one client (keep-alive for uvicorn; gunicorn's sync worker closes every
connection, as under wrk); the difference between the two totals of the
process that runs the app, divided by ``n``, is the cost of a request with
start-up, imports and shutdown cancelled out. (callgrind_control cannot
reach gunicorn's forked worker, hence two runs rather than zeroing the
counters.) ``PYTHONHASHSEED=0`` keeps the two runs' dict layouts alike. The
cache TTL is an hour here: at valgrind's ~70 requests/s a 1 s TTL would
charge each request a hundred times the refresh cost it has at full speed;
``run.py``'s "state reads" section measures refreshes.

``python bench/instructions.py`` prints a table; ``--json`` prints the
numbers for ``run.py``. Needs valgrind (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mount import SELF_ID, make_mounts
from bench.run import Server, log

# (variant, mount, method); "-": the variant does not look at the mount.
CELLS = (
    ("bare", "-", "GET"),
    ("bare", "-", "POST"),
    ("floor", "-", "GET"),
    ("naive", "primary", "GET"),
    ("route", "primary", "GET"),
    ("route", "replica", "POST"),
)
_FORM = b"title=hello&done=0"


@dataclass(frozen=True)
class Cell:
    stack: str
    variant: str
    mount: str
    method: str
    instructions_per_request: float


def send_requests(port: int, method: str, n: int, *, keep_alive: bool) -> None:
    """*n* requests, one at a time; raises if one is not what the cell claims."""
    conn: http.client.HTTPConnection | None = None
    for _ in range(n):
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        body = _FORM if method == "POST" else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        conn.request(method, "/", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status not in (200, 409):
            raise RuntimeError(f"{method} / answered {response.status}")
        if not keep_alive or response.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


@dataclass(frozen=True)
class Where:
    """Where a counted server runs, for ``bench/litefs_side_by_side.py``'s real LiteFS nodes:
    its ``FLY_MACHINE_ID``, its port (None: any free one) and the port the requests go to
    (None: the server's own; else a proxy in front of it, whose own work is not counted)."""

    machine_id: str = SELF_ID
    port: int | None = None
    via: int | None = None


def _total_at_exit(
    stack: str, variant: str, litefs_dir: Path, method: str, requests: int, out_dir: Path, where: Where
) -> int:
    """Instructions of the app process over its whole life, having served *requests*."""
    via = "" if where.via is None else f"-via{where.via}"
    out = out_dir / f"{stack}-{variant}-{litefs_dir.name}-{where.machine_id}{via}-{method}-{requests}"
    server = Server(
        stack,
        variant,
        litefs_dir,
        -1,
        machine_id=where.machine_id,
        wrapper=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"),
        # Same hash seed, same dict layouts: runs that differ only in the
        # request count differ only by the requests' instructions.
        extra_env={"BENCH_CACHE_TTL": "3600", "PYTHONHASHSEED": "0"},
        start_timeout=300,
        stop_timeout=120,
    )
    if where.port is not None:
        server.port = where.port
    with server.running():
        pid = server.app_pid()
        send_requests(where.via or server.port, method, requests, keep_alive=stack == "ASGI")
    # callgrind writes the file when the process exits (gunicorn's worker too).
    dump = Path(f"{out}.{pid}")
    totals = [line for line in dump.read_text().splitlines() if line.startswith(("summary:", "totals:"))]
    if not totals:
        raise RuntimeError(f"callgrind wrote no totals to {dump}")
    return int(totals[0].split()[1])


def count(
    stack: str,
    variant: str,
    litefs_dir: Path,
    method: str,
    n: int,
    warmup: int,
    out_dir: Path,
    where: Where = Where(),
) -> float:
    """Instructions per request of one cell: the difference between a server
    that served *warmup* requests and one that served *warmup* + *n*, so that
    start-up, imports and shutdown cancel out."""
    short = _total_at_exit(stack, variant, litefs_dir, method, warmup, out_dir, where)
    long = _total_at_exit(stack, variant, litefs_dir, method, warmup + n, out_dir, where)
    return (long - short) / n


def measure(n: int, warmup: int) -> list[Cell]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    cells = []
    with tempfile.TemporaryDirectory(prefix="litefs-bench-") as tmp:
        primary, replica = make_mounts(Path(tmp))
        mounts = {"primary": primary, "replica": replica, "-": primary}
        for stack in ("ASGI", "WSGI"):
            for variant, mount, method in CELLS:
                per_request = count(stack, variant, mounts[mount], method, n, warmup, Path(tmp))
                cells.append(Cell(stack, variant, mount, method, per_request))
                log(f"instructions {stack} {variant} {mount} {method}: {per_request:,.0f} per request")
    return cells


def markdown(cells: list[Cell]) -> str:
    lines = [
        "| stack | variant | request | instructions/request | vs bare GET | throughput ratio (bare / this) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for cell in cells:
        base = next(c for c in cells if c.stack == cell.stack and c.variant == "bare" and c.method == "GET")
        what = cell.method if cell.mount == "-" else f"{cell.mount} {cell.method}"
        extra = cell.instructions_per_request - base.instructions_per_request
        lines.append(
            f"| {cell.stack} | {cell.variant} | {what} | {cell.instructions_per_request:,.0f} | "
            f"{'—' if cell is base else f'{extra:+,.0f}'} | "
            f"{base.instructions_per_request / cell.instructions_per_request:.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=500, help="counted requests per cell (default 500)")
    parser.add_argument("--warmup", type=int, default=200, help="requests before counting (default 200)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cells = measure(args.n, args.warmup)
    print(json.dumps([asdict(c) for c in cells]) if args.json else markdown(cells))


if __name__ == "__main__":
    main()
