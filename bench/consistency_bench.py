"""Read-your-writes benchmark: wake latency, and throughput while reads wait.

    python bench/consistency_bench.py

(a) How long after ``<db>-pos`` advances a waiting read wakes (in-process,
    the real PositionWatcher on a real folder; sync and asyncio waiters).
(b) Requests/s of unrelated GETs against a real uvicorn server, with nobody
    waiting and with 300 reads waiting on a TXID that never arrives.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from litefs_route._consistency import PositionWatcher  # noqa: E402
from litefs_route_devcluster import free_port  # noqa: E402  (reserved: the server binds it later)
from litefs_route_devcluster.files import write_lag, write_position, write_primary  # noqa: E402

DB = "app.db"


def write_pos(folder: Path, txid: int) -> None:
    write_position(str(folder), DB, txid, 0)


def wake_latency(rounds: int = 300) -> tuple[list[float], list[float]]:
    folder = Path(tempfile.mkdtemp())
    write_pos(folder, 1)
    watcher = PositionWatcher(str(folder), DB)
    sync_ms: list[float] = []

    def waiter(txid: int, woke: threading.Event) -> None:
        if watcher.wait(txid, 10):
            woke.set()

    for txid in range(2, rounds + 2):
        woke = threading.Event()
        t = threading.Thread(target=waiter, args=(txid, woke))
        t.start()
        while watcher.waiting == 0:
            time.sleep(0.0002)
        t0 = time.perf_counter()
        write_pos(folder, txid)
        woke.wait(10)
        sync_ms.append((time.perf_counter() - t0) * 1000)
        t.join()

    async def run_async() -> list[float]:
        out: list[float] = []
        base = rounds + 2
        for txid in range(base, base + rounds):
            task = asyncio.create_task(watcher.wait_async(txid, 10))
            while watcher.waiting == 0:
                await asyncio.sleep(0.0002)
            t0 = time.perf_counter()
            write_pos(folder, txid)
            await task
            out.append((time.perf_counter() - t0) * 1000)
        return out

    return sync_ms, asyncio.run(run_async())


APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from litefs_route.asgi import PrimaryRoutingMiddleware

async def hello(request):
    return PlainTextResponse("hello")

app = PrimaryRoutingMiddleware(Starlette(routes=[Route("/", hello)]), consistency_wait=60)
"""


async def requests_per_second(url: str, seconds: float = 3.0, concurrency: int = 8) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                r = await client.get("/")
                assert r.status_code == 200
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


async def throughput_with_waiters(waiters: int = 300) -> tuple[float, float]:
    folder = Path(tempfile.mkdtemp())
    write_primary(str(folder), "primary00000001")
    write_lag(str(folder), 10)
    write_pos(folder, 1)
    app_dir = Path(tempfile.mkdtemp())
    (app_dir / "rywapp.py").write_text(APP)
    port = free_port()
    env = {
        **os.environ,
        "LITEFS_DIR": str(folder),
        "DATABASE_FILENAME": DB,
        "FLY_MACHINE_ID": "replica0000001",
        "PYTHONPATH": f"{app_dir}{os.pathsep}{ROOT}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--port", str(port), "--log-level", "warning", "rywapp:app"], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(url)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        idle = await requests_per_second(url)
        limits = httpx.Limits(max_connections=waiters + 10)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            pending = [
                asyncio.create_task(client.get("/", cookies={"__txid": "00000000000000ff"})) for _ in range(waiters)
            ]
            await asyncio.sleep(1.0)  # let them all arrive and wait
            assert not any(p.done() for p in pending)
            busy = await requests_per_second(url)
            write_pos(folder, 255)
            results = await asyncio.gather(*pending)
            assert all(r.status_code == 200 for r in results)
        return idle, busy
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    sync_ms, async_ms = wake_latency()
    idle, busy = asyncio.run(throughput_with_waiters())

    def q(values: list[float], p: float) -> float:
        return sorted(values)[int(p * (len(values) - 1))]

    print("## Read-your-writes\n")
    print("| measure | median | p99 |")
    print("|---|---|---|")
    print(f"| wake latency, thread waiter (ms) | {statistics.median(sync_ms):.2f} | {q(sync_ms, 0.99):.2f} |")
    print(f"| wake latency, asyncio waiter (ms) | {statistics.median(async_ms):.2f} | {q(async_ms, 0.99):.2f} |")
    print()
    print("| unrelated GETs (uvicorn, 8 concurrent clients) | requests/s |")
    print("|---|---|")
    print(f"| nobody waiting | {idle:,.0f} |")
    print(f"| 300 reads waiting on their TXID | {busy:,.0f} ({busy / idle:.0%}) |")


if __name__ == "__main__":
    main()
