"""Forward mode: a replica sends the writes Fly cannot replay to the primary itself, streaming both ways.

A primary and a replica as separate server processes (gunicorn for WSGI,
uvicorn for ASGI), the replica's mount naming the primary, ``forward_url``
pointing at the primary's port. The app (``tests/forward_apps.py``) hashes
each upload as it streams, so a body that arrives whole and unchanged shows.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from litefs_route_devcluster import free_port
from tests.support import Mount, ServerProcess, server_process, wait_until

PRIMARY = "e784079b449483"
REPLICA = "3d8d9e5b711e68"
SECRET = "s3cret-shared-by-every-instance"
MB = 1_000_000


class Serve(Protocol):
    def __call__(
        self, role: str, *, forward: str = ..., forward_to: int | None = ..., env: dict[str, str] | None = ...
    ) -> AbstractContextManager[ServerProcess]: ...


@pytest.fixture(params=["wsgi", "asgi"])
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Serve:
    """serve(role, forward=..., forward_to=port): the forward app as PRIMARY or REPLICA in its own process."""
    interface = str(request.param)
    mounts = {"primary": Mount(tmp_path / "primary"), "replica": Mount(tmp_path / "replica")}
    mounts["primary"].make_primary()
    mounts["replica"].make_replica(PRIMARY)

    @contextmanager
    def serve(
        role: str, *, forward: str = "oversize", forward_to: int | None = None, env: dict[str, str] | None = None
    ) -> Iterator[ServerProcess]:
        port = free_port()
        if interface == "wsgi":
            argv = [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "4", "-b", f"127.0.0.1:{port}"]
            argv.append("tests.forward_apps:wsgi_app")
        else:
            argv = [sys.executable, "-m", "uvicorn", "--port", str(port), "tests.forward_apps:asgi_app"]
        environment = {
            "LITEFS_DIR": str(mounts[role].path),
            "FLY_MACHINE_ID": PRIMARY if role == "primary" else REPLICA,
            "LITEFS_ROUTE_FORWARD_SECRET": SECRET,
            "FORWARD": forward,
            "FORWARD_URL": f"http://127.0.0.1:{forward_to or 1}",
            **(env or {}),
        }
        log = tmp_path / f"{role}-{port}.log"
        with server_process(argv, port, environment, log) as process:
            yield process

    return serve


def _body(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)


def _chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize(
    ("size", "chunked", "forwarded"),
    [
        pytest.param(3 * MB, False, True, id="3MB-content-length-forwarded"),
        pytest.param(3 * MB, True, True, id="3MB-chunked-forwarded"),
        pytest.param(MB + 1, True, True, id="chunked-growing-just-past-the-limit-forwarded"),
        pytest.param(1000, False, False, id="small-replayed"),
        pytest.param(1000, True, False, id="small-chunked-replayed"),
    ],
)
def test_oversize_writes_are_forwarded_and_the_rest_replayed(
    serve: Serve, size: int, chunked: bool, forwarded: bool
) -> None:
    body = _body(size)
    with serve("primary", forward="oversize") as primary, serve("replica", forward_to=primary.port) as replica:
        content: Any = _chunks(body) if chunked else body
        response = httpx.post(replica.url + "/upload?x=1", content=content, timeout=60)
    if not forwarded:
        assert response.status_code == 409
        assert response.headers["fly-replay"].startswith(f"instance={PRIMARY};")
        return
    assert response.status_code == 200, response.text
    seen = response.json()
    assert (seen["instance"], seen["size"]) == (PRIMARY, size)
    assert seen["sha256"] == hashlib.sha256(body).hexdigest()
    assert response.headers["fly-instance"] == PRIMARY  # who answered
    assert response.headers["fly-primary-instance"] == PRIMARY
    assert seen["x_forwarded_for"] == "127.0.0.1"  # the client's address, for the app
    assert seen["forwarded"] == f'for=127.0.0.1;proto=http;host="{replica.url[7:]}"'
    assert seen["host"] == replica.url[7:]  # the Host the client used
    assert seen["secret_reached_app"] is False


def test_always_forwards_every_write_and_passes_the_primarys_cookies(serve: Serve, tmp_path: Path) -> None:
    """forward="always" (no Fly edge): a small write too; the primary's read-your-writes cookie reaches the client."""
    cookie_env = {"DATABASE_FILENAME": "app.db", "BUMP_POS": "1"}
    with (
        serve("primary", forward="always", env=cookie_env) as primary,
        serve("replica", forward="always", forward_to=primary.port, env=cookie_env) as replica,
    ):
        response = httpx.post(replica.url + "/upload", content=b"small")
    assert response.status_code == 200, response.text
    assert response.json()["instance"] == PRIMARY
    assert int(response.cookies["__txid"], 16) == 1


def test_a_forged_forwarded_request_is_refused(serve: Serve) -> None:
    """The primary runs a forwarded request only with the secret; a non-primary never runs one."""
    with serve("primary") as primary, serve("replica", forward_to=primary.port) as replica:
        forged = httpx.post(primary.url + "/upload", content=b"x", headers={"x-litefs-route-forward": "guess" * 4})
        unsigned = httpx.post(primary.url + "/upload", content=b"x", headers={"x-litefs-route-forward": ""})
        # The right secret, to a replica: forwarded on to the primary, within the hop limit.
        on = httpx.post(replica.url + "/upload", content=b"x", headers={"x-litefs-route-forward": SECRET})
        looped = httpx.post(
            replica.url + "/upload",
            content=b"x",
            headers={"x-litefs-route-forward": SECRET, "x-litefs-route-forward-hop": "3"},
        )
    for response in (forged, unsigned):
        assert response.status_code == 403
        assert "lacks this cluster's secret" in response.text
    assert (on.status_code, on.json()["instance"]) == (200, PRIMARY)
    assert looped.status_code == 503
    assert "forwarded here 3 times" in looped.text


def test_a_primary_that_cannot_be_reached_is_a_503_that_says_nothing_ran(serve: Serve) -> None:
    with serve("replica", forward="always", forward_to=free_port()) as replica:
        response = httpx.post(replica.url + "/upload", content=b"x")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert "it did not run" in response.text


def test_a_replayed_write_fly_sent_back_is_forwarded(serve: Serve) -> None:
    """fly-replay-failed (Fly could not deliver the replay): forward mode delivers it itself."""
    failed = "instance=e784079b449483;app=a;region=ams;replay_source=3d8d9e5b711e68;reason=timeout;elapsed_ms=5000"
    with serve("primary") as primary, serve("replica", forward_to=primary.port) as replica:
        response = httpx.post(replica.url + "/upload", content=b"small", headers={"fly-replay-failed": failed})
    assert (response.status_code, response.json()["instance"]) == (200, PRIMARY)


def test_the_primary_dying_mid_upload_is_a_502_that_says_it_may_have_run(serve: Serve, tmp_path: Path) -> None:
    started = tmp_path / "started"
    release = threading.Event()

    def upload() -> Iterator[bytes]:
        yield _body(2 * MB)  # over the limit: forwarded; the primary starts reading it
        release.wait(30)
        yield _body(2 * MB)

    result: dict[str, httpx.Response] = {}
    with (
        serve("primary", env={"STARTED_FILE": str(started)}) as primary,
        serve("replica", forward_to=primary.port) as replica,
    ):
        client = threading.Thread(
            target=lambda: result.update(response=httpx.post(replica.url + "/upload", content=upload(), timeout=60))
        )
        client.start()
        wait_until(started.exists, what="the primary to start reading the upload")
        os.killpg(primary.process.pid, signal.SIGKILL)  # the primary's Machine dies mid-upload (workers too)
        primary.process.wait(10)
        release.set()
        client.join(60)
    response = result["response"]
    assert response.status_code == 502
    assert "it may have run" in response.text


@pytest.mark.parametrize(
    ("given", "client", "expected"),
    [
        pytest.param(
            [("Host", "example.com"), ("Content-Type", "text/plain")],
            "203.0.113.7",
            [
                ("Host", "example.com"),
                ("Content-Type", "text/plain"),
                ("X-Forwarded-For", "203.0.113.7"),
                ("Forwarded", 'for=203.0.113.7;proto=https;host="example.com"'),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "example.com"),
            ],
            id="plain",
        ),
        pytest.param(
            [
                ("Host", "h"),
                ("X-Forwarded-For", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
                ("X-Forwarded-Proto", "http"),
            ],
            "2001:db8::1",
            [
                ("Host", "h"),
                ("X-Forwarded-Proto", "http"),
                ("X-Forwarded-For", "1.1.1.1, 2.2.2.2, 2001:db8::1"),
                ("Forwarded", 'for="[2001:db8::1]";proto=https;host="h"'),
                ("X-Forwarded-Host", "h"),
            ],
            id="earlier-proxies-kept-ipv6-quoted",
        ),
        pytest.param(
            [
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "dropped: listed in Connection"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "5"),
                ("TE", "trailers"),
                ("Upgrade", "h2c"),
                ("Expect", "100-continue"),
                ("Proxy-Authorization", "secret of the hop"),
                ("x-litefs-route-forward", "a forged secret"),
                ("x-litefs-route-forward-hop", "7"),
            ],
            None,
            [("Host", "localhost"), ("X-Forwarded-Proto", "https")],  # HTTP/1.0 sends none; HTTP/1.1 needs one
            id="hop-by-hop-and-our-own-dropped",
        ),
    ],
)
def test_forwarded_headers(given: list[tuple[str, str]], client: str | None, expected: list[tuple[str, str]]) -> None:
    from litefs_route._forwarding import forwarded_headers

    headers = forwarded_headers(given, client=client, scheme="https", hop=2, content_length=5)
    assert headers == [
        *expected,
        ("x-litefs-route-forward-hop", "2"),
        ("Content-Length", "5"),
    ]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        pytest.param({"forward": "always"}, "needs a forward_secret", id="no-secret"),
        pytest.param({"forward": "always", "forward_secret": "short"}, "at least 16", id="short-secret"),
        pytest.param({"forward": "always", "forward_secret": "é" * 16}, "ASCII", id="non-ascii-secret"),
        pytest.param({"forward": "sometimes", "forward_secret": "s" * 16}, "'off', 'oversize' or", id="bad-mode"),
        pytest.param(
            {"forward": "always", "forward_secret": "s" * 16, "forward_url": "https://x"}, "http://host", id="https-url"
        ),
    ],
)
def test_forward_mode_refuses_to_start_misconfigured(
    options: dict[str, Any], error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litefs_route import wsgi

    monkeypatch.delenv("LITEFS_ROUTE_FORWARD_SECRET", raising=False)
    monkeypatch.setenv("FLY_APP_NAME", "app")
    with pytest.raises(ValueError, match=error):
        wsgi.PrimaryRoutingMiddleware(lambda e, s: [], litefs_dir="/nonexistent", **options)


def test_a_chunked_write_a_wsgi_server_does_not_terminate_is_refused_not_cut_short(tmp_path: Path) -> None:
    """The WSGI contract: without wsgi.input_terminated the body's end is unknown, so nothing is forwarded (411)."""
    import io

    from litefs_route import wsgi

    mount = Mount(tmp_path / "replica")
    mount.make_replica(PRIMARY)
    calls: list[str] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        calls.append("app")
        return []

    middleware = wsgi.PrimaryRoutingMiddleware(
        app,
        litefs_dir=str(mount.path),
        instance_id=REPLICA,
        litefs_api_url="off",
        forward="always",
        forward_secret=SECRET,
        forward_url=f"http://127.0.0.1:{free_port()}",
    )
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/upload",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": io.BytesIO(b"never read"),
    }
    seen: dict[str, str] = {}

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        seen["status"] = status

    body = b"".join(middleware(environ, start_response))
    assert seen["status"] == "411 Length Required"
    assert b"cannot be forwarded" in body
    assert calls == []
