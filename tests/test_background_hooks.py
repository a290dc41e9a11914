"""The in-process hooks: ``is_primary()``, ``@primary_only``, role callbacks (a mount the test drives).

Callbacks are watched by one thread per process, so they are tested in a
process of their own, which prints each callback as it runs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from litefs_route import is_primary, primary_only, primary_only_skips, wsgi
from tests.support import Mount, wait_until


def _app(environ: object, start_response: object) -> list[bytes]:
    return []


def test_is_primary_follows_the_middlewares_reading(mount: Mount, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITEFS_DIR", str(mount.path))
    monkeypatch.setenv("FLY_MACHINE_ID", "me")
    middleware = wsgi.PrimaryRoutingMiddleware(_app, cache_ttl=0, litefs_api_url="off")
    reads = middleware.routing.cache.reads
    assert is_primary()
    assert middleware.routing.cache.reads > reads  # the middleware's own cache answered
    mount.make_replica("other")
    wait_until(lambda: not is_primary(), what="a replica")
    mount.make_no_primary()
    assert not is_primary()
    mount.make_primary()
    assert is_primary()


def test_standalone_counts_as_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LITEFS_DIR", raising=False)
    assert is_primary()


def test_primary_only_skips_on_a_replica_and_counts(mount: Mount, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITEFS_DIR", str(mount.path))
    monkeypatch.setenv("FLY_MACHINE_ID", "me")
    wsgi.PrimaryRoutingMiddleware(_app, cache_ttl=0, litefs_api_url="off")  # keeps the reading; cache_ttl 0
    calls: list[int] = []

    @primary_only
    def job(n: int) -> int:
        calls.append(n)
        return n * 2

    @primary_only
    async def async_job(n: int) -> int:
        calls.append(n)
        return n * 3

    assert job(1) == 2
    assert asyncio.run(async_job(2)) == 6
    mount.make_replica("other")
    wait_until(lambda: not is_primary(), what="a replica")
    before = primary_only_skips()
    assert job(3) is None
    assert asyncio.run(async_job(4)) is None
    assert calls == [1, 2]
    after = primary_only_skips()
    assert after[job.__qualname__] == before.get(job.__qualname__, 0) + 1
    assert after[async_job.__qualname__] == before.get(async_job.__qualname__, 0) + 1


CALLBACKS = textwrap.dedent(
    """
    import sys, threading
    from litefs_route import on_become_primary, on_stop_primary

    @on_become_primary
    def up():
        print("up", flush=True)

    @on_stop_primary
    def down():
        print("down", flush=True)

    sys.stdin.readline()
    """
)


def test_callbacks_run_when_the_node_becomes_and_stops_being_primary(tmp_path: Path, mount: Mount) -> None:
    mount.make_replica("other")
    env = {"LITEFS_DIR": str(mount.path), "FLY_MACHINE_ID": "me", "LITEFS_API_URL": "off", "PATH": "/usr/bin:/bin"}
    with subprocess.Popen(
        [sys.executable, "-c", CALLBACKS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            mount.make_primary()
            assert proc.stdout.readline() == "up\n"
            mount.make_replica("other")
            assert proc.stdout.readline() == "down\n"
            mount.make_no_primary()
            mount.make_primary()
            assert proc.stdout.readline() == "up\n"
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)
