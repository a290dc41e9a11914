"""Forward mode: an upload through a replica against the same upload sent to the primary directly.

    python bench/forward_bench.py            # 1, 10 and 100 MB, 3 rounds (~2 minutes)
    python bench/forward_bench.py --quick    # 1 and 10 MB, 1 round

A primary and a replica as separate processes on this machine (the
forward-mode test app, ``tests/forward_apps.py``: it hashes the upload as it
streams), for WSGI (gunicorn, one gthread worker) and ASGI (uvicorn). Per
size and round, interleaved: the upload sent to the primary (**direct**) and
to the replica in ``forward="oversize"`` mode (**forwarded**), one client
(httpx, 64 KiB chunks). A fresh replica for each size, so its peak resident
memory (``VmHWM`` of the process that forwards: gunicorn's worker, uvicorn
itself) is that size's: flat as the body grows is the claim. Reported: the
median time, the throughput, what forwarding adds, and the peak RSS.

The report (Markdown) is printed and written to ``bench/results/forward.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from litefs_route_devcluster import free_port, port_open, wait_for  # noqa: E402
from litefs_route_devcluster.cluster import stop_process_group  # noqa: E402
from litefs_route_devcluster.files import write_lag, write_primary  # noqa: E402

PRIMARY, REPLICA = "e784079b449483", "3d8d9e5b711e68"
SECRET = "bench-secret-shared-by-every-instance"
MB = 1_000_000


@contextlib.contextmanager
def server(interface: str, role: str, folder: Path, forward_to: int | None) -> Iterator[tuple[str, int]]:
    """The forward app as *role*; yields (its URL, the pid of the process that serves)."""
    mount = folder / role
    mount.mkdir(parents=True, exist_ok=True)
    write_primary(str(mount), None if role == "primary" else PRIMARY)
    write_lag(str(mount), 0 if role == "primary" else 10)
    port = free_port()
    if interface == "wsgi":
        argv = [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "4", "-b", f"127.0.0.1:{port}"]
        argv.append("tests.forward_apps:wsgi_app")
    else:
        argv = [sys.executable, "-m", "uvicorn", "--port", str(port), "--log-level", "warning"]
        argv.append("tests.forward_apps:asgi_app")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITEFS_DIR": str(mount),
        "FLY_MACHINE_ID": PRIMARY if role == "primary" else REPLICA,
        "LITEFS_ROUTE_FORWARD_SECRET": SECRET,
        "FORWARD": "oversize",
        "FORWARD_URL": f"http://127.0.0.1:{forward_to or 1}",
    }
    process = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(lambda: port_open("127.0.0.1", port), timeout=30, message=f"{interface} {role} did not listen")
        yield f"http://127.0.0.1:{port}", _serving_pid(process.pid, interface)
    finally:
        stop_process_group(process, 10, role)


def _serving_pid(pid: int, interface: str) -> int:
    """gunicorn serves in its worker (the master's child); uvicorn in its own process."""
    if interface != "wsgi":
        return pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("gunicorn started no worker")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def upload(url: str, size: int) -> float:
    """Seconds to send *size* bytes and get the app's answer (checked: it saw them all)."""
    block = bytes(range(256)) * 256  # 64 KiB

    def body() -> Iterator[bytes]:
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            yield piece

    started = time.perf_counter()
    response = httpx.post(url + "/upload", content=body(), headers={"Content-Length": str(size)}, timeout=300)
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or response.json()["size"] != size or response.json()["instance"] != PRIMARY:
        raise RuntimeError(f"upload to {url} failed: {response.status_code} {response.text[:200]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 and 10 MB, 1 round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [1 * MB + 1, 10 * MB] if args.quick else [1 * MB + 1, 10 * MB, 100 * MB]
    rounds = 1 if args.quick else args.rounds
    rows = []
    with tempfile.TemporaryDirectory(prefix="forward-bench-") as tmp:
        for interface in ("wsgi", "asgi"):
            with server(interface, "primary", Path(tmp) / interface, None) as (primary_url, primary_pid):
                for size in sizes:
                    with server(interface, "replica", Path(tmp) / interface, int(primary_url.rsplit(":", 1)[1])) as (
                        replica_url,
                        replica_pid,
                    ):
                        direct, forwarded = [], []
                        for _ in range(rounds):  # interleaved: the machine's noise hits both alike
                            direct.append(upload(primary_url, size))
                            forwarded.append(upload(replica_url, size))
                        rows.append(
                            (
                                interface,
                                size,
                                statistics.median(direct),
                                statistics.median(forwarded),
                                peak_rss_mb(replica_pid),
                                peak_rss_mb(primary_pid),
                            )
                        )
    lines = [
        "| stack | upload | direct to the primary | forwarded by the replica | added "
        "| replica peak RSS | primary peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for interface, size, direct_s, forwarded_s, replica_rss, primary_rss in rows:
        mb = size / MB
        lines.append(
            f"| {interface} | {mb:.0f} MB | {direct_s * 1000:.0f} ms ({mb / direct_s:.0f} MB/s) "
            f"| {forwarded_s * 1000:.0f} ms ({mb / forwarded_s:.0f} MB/s) | {(forwarded_s - direct_s) * 1000:+.0f} ms "
            f"| {replica_rss:.0f} MB | {primary_rss:.0f} MB |"
        )
    report = "\n".join(
        [
            "# Forward mode: an upload through a replica, against the same upload to the primary",
            "",
            f"`python bench/forward_bench.py{' --quick' if args.quick else ''}`, median of {rounds} round(s).",
            "",
            *lines,
            "",
        ]
    )
    print(report)
    out = ROOT / "bench" / "results" / "forward.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report)


if __name__ == "__main__":
    main()
