"""Read-your-writes with the __txid cookie, both adapters, real servers.

A test thread advances ``<db>-pos`` in a real mount folder; the assertions
are about the order of events (pending -> position advances -> completes),
never about durations.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from litefs_route import asgi
from litefs_route._consistency import TxidCookies
from litefs_route._request import RequestInfo
from litefs_route._routing import NodeRouting
from litefs_route._verdicts import Kind
from tests.plans import routing_for
from tests.support import ADAPTERS, Mount, serve_asgi, serve_under, wait_until

ME = "e784079b449483"
PRIMARY = "3d8d9e5b711e68"
DB = "app.db"


@dataclass
class Stack:
    url: str
    routing: NodeRouting
    calls: list[str]
    mount: Mount

    def get(self, path: str = "/", txid: str | None = None, timeout: float = 10) -> httpx.Response:
        cookies = {"__txid": txid} if txid is not None else None
        return httpx.get(self.url + path, cookies=cookies, timeout=timeout)


def _apps(calls: list[str], mount: Mount) -> tuple[Any, Any]:
    from flask import Flask, make_response
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    def commit() -> None:
        calls.append("commit")
        mount.set_pos(DB, 77)  # the handler's write advances the position

    flask = Flask("consistency", static_folder=None)

    @flask.get("/")
    @flask.get("/static/x")
    def f_read() -> str:
        calls.append("read")
        return "read"

    @flask.post("/commit")
    def f_commit() -> Any:
        commit()
        response = make_response("committed")
        response.set_cookie("session", "abc")
        return response

    async def s_read(request: Request) -> Response:
        calls.append("read")
        return PlainTextResponse("read")

    def s_commit(request: Request) -> Response:
        commit()
        response = PlainTextResponse("committed")
        response.set_cookie("session", "abc")
        return response

    starlette = Starlette(
        routes=[Route("/", s_read), Route("/static/x", s_read), Route("/commit", s_commit, methods=["POST"])]
    )
    return flask, starlette


@pytest.fixture
def consistency_wait() -> float:
    """How long a replica read waits for its cookie's TXID: no test sees 30 s run out (one parametrizes less)."""
    return 30


@pytest.fixture
def stack(adapter: str, consistency_wait: float, mount: Mount) -> Iterator[Stack]:
    """The same apps under each adapter."""
    calls: list[str] = []
    mount.set_pos(DB, 5)
    with serve_under(
        adapter,
        *_apps(calls, mount),
        litefs_dir=str(mount.path),
        instance_id=ME,
        database=DB,
        cache_ttl=0,
        passthrough=["/static/*"],
        consistency_wait=consistency_wait,
    ) as served:
        yield Stack(served.url, served.routing, calls, mount)


def test_replica_read_waits_for_its_write(stack: Stack) -> None:
    stack.mount.make_replica(PRIMARY)
    positions = stack.routing.positions
    assert positions is not None
    with ThreadPoolExecutor(1) as pool:
        pending: Future[httpx.Response] = pool.submit(stack.get, "/", "000000000000000a")  # LiteFS's format
        wait_until(lambda: positions.waiting == 1, what="the read to wait")
        stack.mount.set_pos(DB, 9)  # not yet
        wait_until(lambda: positions.watchers[0].last_known == 9, what="the watcher to see 9")
        assert not pending.done()
        assert positions.waiting == 1
        assert stack.calls == []
        stack.mount.set_pos(DB, 10)  # caught up
        response = pending.result(10)
    assert (response.status_code, response.text) == (200, "read")
    assert stack.calls == ["read"]
    assert positions.waiting == 0


@pytest.mark.parametrize(("adapter", "consistency_wait"), [(a, 0.2) for a in ADAPTERS], ids=ADAPTERS)
def test_replica_that_never_catches_up_replays_to_the_primary(stack: Stack) -> None:
    stack.mount.make_replica(PRIMARY)
    response = stack.get("/", "00000000000003e8")
    assert response.status_code == 409
    assert (
        response.headers["fly-replay"] == f"instance={PRIMARY};state=litefs-route-hop-1;timeout=5s;fallback=force_self"
    )
    assert stack.calls == []


def test_primary_sets_the_cookie_after_a_write(stack: Stack) -> None:
    stack.mount.make_primary()
    response = httpx.post(stack.url + "/commit")
    assert response.status_code == 200
    set_cookies = response.headers.get_list("set-cookie")
    assert "__txid=000000000000004d; Path=/; Max-Age=300; HttpOnly; SameSite=Lax" in set_cookies  # 77: after
    assert any(c.startswith("session=abc") for c in set_cookies)  # the app's own cookie is kept
    # a read on the primary with that cookie does not wait, and keeps the cookie
    read = stack.get("/", "000000000000004d", timeout=5)
    assert (read.status_code, read.headers.get("set-cookie")) == (200, None)


def test_replica_replays_writes_without_a_cookie(stack: Stack) -> None:
    stack.mount.make_replica(PRIMARY)
    response = httpx.post(stack.url + "/commit")
    assert response.status_code == 409
    assert "set-cookie" not in response.headers
    assert stack.calls == []


def test_primary_never_waits_and_clears_a_cookie_ahead_of_it(stack: Stack) -> None:
    stack.mount.make_primary()
    response = stack.get("/", "0000000000000064", timeout=5)  # 100 > 5: from before a failover
    assert (response.status_code, response.text) == (200, "read")
    assert response.headers["set-cookie"] == "__txid=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
    assert stack.routing.positions is not None
    assert stack.routing.positions.waiting == 0


@pytest.mark.parametrize(
    "cookie",
    ["zz", "0000000000000000", "0", "00000000000000000a", "-1", "A"],
    ids=["not-hex", "zero", "short-zero", "17-digits", "negative", "uppercase"],
)
def test_malformed_cookies_never_wait(stack: Stack, cookie: str) -> None:
    stack.mount.make_replica(PRIMARY)
    response = stack.get("/", cookie, timeout=5)  # a wait would be 30 s: the client would give up
    assert (response.status_code, response.text) == (200, "read")


def test_passthrough_paths_do_not_wait(stack: Stack) -> None:
    stack.mount.make_replica(PRIMARY)
    response = stack.get("/static/x", "00000000000003e8", timeout=5)
    assert (response.status_code, response.text) == (200, "read")


def test_many_waiters_share_one_watcher(mount: Mount) -> None:
    calls: list[str] = []
    _, starlette = _apps(calls, mount)
    app = asgi.PrimaryRoutingMiddleware(
        starlette, litefs_dir=str(mount.path), instance_id=ME, database=DB, cache_ttl=1, consistency_wait=30
    )
    positions = app.routing.positions
    assert positions is not None
    mount.make_replica(PRIMARY)
    mount.set_pos(DB, 1)
    with serve_asgi(app) as url, ThreadPoolExecutor(50) as pool:
        futures = [
            pool.submit(httpx.get, url + "/", cookies={"__txid": "0000000000000002"}, timeout=20) for _ in range(50)
        ]
        wait_until(lambda: positions.waiting == 50, what="50 waiting reads")
        assert positions.watchers[0].threads_started == 1  # one poller for all fifty
        assert calls == []
        mount.set_pos(DB, 2)
        assert [f.result(20).status_code for f in futures] == [200] * 50
    assert len(calls) == 50


@pytest.mark.parametrize(
    ("header", "txids"),
    [
        (None, None),
        ("__txid=000000000000000a", (10, 0)),
        ("a=1; __txid=000000000000000a; b=2", (10, 0)),
        ("__txid=0000000000000001; __txid=00000000000000ff", (255, 0)),
        ("x__txid=00000000000000ff", None),
        ("__txid=00000000000000ff" + "; a=b" * 5000, None),
        ("__txid=a", None),
        ("__txid=00000000000000f", None),
        ("__txid=00000000000000fff", None),
        ("__txid=00000000000000FF", (255, 0)),
        ("__txid=0x000000000000ff", None),
        ("__txid=0000000000000000", None),
        ("__txid_cache.db=0000000000000007", (0, 7)),
        ("__txid=0000000000000003; __txid_cache.db=0000000000000007", (3, 7)),
        ("__txid_other.db=0000000000000007", None),
        ("__txid_app.db=0000000000000007", None),
    ],
    ids=[
        "absent",
        "alone",
        "among-others",
        "repeated-takes-max",
        "other-name",
        "huge-header",
        "short",
        "15-digits",
        "17-digits",
        "upper-case-as-litefs",
        "0x-prefix",
        "zero",
        "second-database",
        "both-databases",
        "unknown-database",
        "first-database-by-its-own-name",
    ],
)
def test_parse_txid_cookies(header: str | None, txids: tuple[int, ...] | None) -> None:
    """Two databases: app.db's cookie is LiteFS's __txid, cache.db's __txid_cache.db."""
    assert TxidCookies(["app.db", "cache.db"]).parse(header) == txids


@pytest.mark.parametrize(
    "databases",
    [["app.db", "app.db"], ["../app.db"], [".hidden"], ["a b.db"], ["app;db"], ["x" * 200]],
    ids=["repeated", "path", "dot-file", "space", "semicolon", "too-long"],
)
def test_database_names_that_cannot_be_cookies_are_refused(databases: list[str]) -> None:
    with pytest.raises(ValueError, match="database"):
        routing_for(litefs_dir="/x", database=databases)


def test_a_cookie_not_yet_reached_takes_the_plan_not_the_fast_path(mount: Mount) -> None:
    """The fast path never skips a read-your-writes wait (nor a primary's check)."""
    mount.make_replica("primary-1")
    mount.set_pos(DB, 9)
    routing = routing_for(litefs_dir=str(mount.path), instance_id="replica-1", database=DB, cache_ttl=3600)
    routing.cache.refresh()
    request = RequestInfo.from_headers(
        "GET",
        "/",
        replay_src=None,
        content_length=None,
        transfer_encoding=None,
        cookie="__txid=000000000000000a",
        txid_cookies=routing.txid_cookies,
    )
    assert routing.outcome_without_io(request) is None  # TXID 10 not known to be reached
    assert routing.positions is not None
    mount.set_pos(DB, 10)
    assert routing.positions.wait((10,), timeout=5)
    outcome = routing.outcome_without_io(request)  # now known reached: nothing to wait for
    assert outcome is not None
    assert outcome.decision.kind is Kind.RUN
