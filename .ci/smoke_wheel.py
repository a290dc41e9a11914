"""Smoke-test an installed litefs-route wheel, away from the repository (run by .ci/run).

    python .ci/smoke_wheel.py contents CORE.whl DEVCLUSTER.whl   # what each wheel holds
    python .ci/smoke_wheel.py core      # in a venv with only the litefs-route wheel installed
    python .ci/smoke_wheel.py cluster   # after the litefs-route-devcluster wheel too

Standard library only; run it from a directory outside the clone so that the
installed package, not the source tree, is what gets imported.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from typing import Any

FRAMEWORKS = (
    *("flask", "werkzeug", "starlette", "uvicorn", "anyio", "django"),
    # What the observability extras and the tests bring: never imported by the core either.
    *("prometheus_client", "sentry_sdk", "opentelemetry"),
    # The Postgres drivers and ORM (the postgres extra, the tests): imported only when a reader is made.
    *("psycopg", "psycopg2", "sqlalchemy"),
)
# This venv's own command, not whatever `litefs-route` comes first on PATH.
COMMAND = os.path.join(os.path.dirname(sys.executable), "litefs-route")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"smoke: FAILED: {what}")
    print(f"smoke: ok: {what}")


def core() -> None:
    import litefs_route
    from litefs_route import asgi, wsgi

    check(os.path.dirname(litefs_route.__file__).find("site-packages") >= 0, "the installed package is imported")
    check(not [m for m in FRAMEWORKS if m in sys.modules], "importing litefs_route imports no framework")
    check("litefs_route_devcluster" not in sys.modules, "the core does not import the dev cluster")

    def tiny_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hi"]

    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, dict(headers)
        return lambda data: None

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "wsgi.input": io.BytesIO(b""), "CONTENT_LENGTH": "0"}
    body = b"".join(wsgi.PrimaryRoutingMiddleware(tiny_wsgi, instance_id="smoke")(environ, start_response))
    check(
        (seen["status"], body, seen["headers"].get("Fly-Instance")) == ("200 OK", b"hi", "smoke"),
        "the WSGI middleware runs a write standalone and tags it",
    )

    async def tiny_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"hi"})

    async def call_asgi() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"", "headers": []}
        await asgi.PrimaryRoutingMiddleware(tiny_asgi, instance_id="smoke")(scope, receive, send)
        return sent

    sent = asyncio.run(call_asgi())
    headers = dict(sent[0]["headers"])
    check(
        (sent[0]["status"], headers.get(b"fly-instance"), sent[1]["body"]) == (200, b"smoke", b"hi"),
        "the ASGI middleware runs a write standalone and tags it",
    )

    from litefs_route import _postgres

    try:
        _postgres.PostgresPositionReader("postgresql://app@127.0.0.1/app")
    except ImportError as exc:
        missing = str(exc)
    else:
        missing = ""
    check(
        "pip install 'litefs-route[postgres]'" in missing and "psycopg" not in sys.modules,
        "without psycopg, a Postgres position reader says which extra to install",
    )

    env = {k: v for k, v in os.environ.items() if k not in ("LITEFS_DIR", "FLY_MACHINE_ID")}
    done = subprocess.run([COMMAND, "status", "--json"], capture_output=True, text=True, env=env, timeout=60)
    check(done.returncode == 0 and json.loads(done.stdout)["role"] == "standalone", "litefs-route status")

    done = subprocess.run([COMMAND, "dev"], capture_output=True, text=True, env=env, timeout=60)
    check(
        done.returncode == 2
        and "pip install litefs-route-devcluster" in done.stderr
        and "Traceback" not in done.stderr,
        "without the dev cluster, `litefs-route dev` says in one line what to install",
    )


def cluster() -> None:
    dev("the bundled demo", [])
    with tempfile.TemporaryDirectory() as folder:
        # As a user would: their app in the current directory.
        dev("an ASGI app under uvicorn", [write_asgi_app(folder)], cwd=folder)


def contents(core_wheel: str, devcluster_wheel: str) -> None:
    def packages(wheel: str) -> set[str]:
        with zipfile.ZipFile(wheel) as z:
            return {name.split("/")[0] for name in z.namelist() if not name.split("/")[0].endswith(".dist-info")}

    def modules(wheel: str) -> set[str]:
        with zipfile.ZipFile(wheel) as z:
            return {name for name in z.namelist() if name.endswith(".py")}

    check(packages(core_wheel) == {"litefs_route"}, "the litefs-route wheel holds litefs_route only")
    # The cluster's parts: the process killer, the Consul stand-in, the Fly-like front, the pytest plugin.
    cluster_parts = ("reaper", "consul", "proxy", "pytest_plugin", "devcluster")
    check(
        not [m for m in modules(core_wheel) if any(part in m for part in cluster_parts)],
        "the litefs-route wheel has no process killer, Consul stand-in, proxy or pytest plugin",
    )
    check(
        packages(devcluster_wheel) == {"litefs_route_devcluster"}, "the devcluster wheel holds litefs_route_devcluster"
    )
    with zipfile.ZipFile(devcluster_wheel) as z:
        entry_points = next(z.read(n).decode() for n in z.namelist() if n.endswith("entry_points.txt"))
    check(
        "[litefs_route.commands]" in entry_points and "[pytest11]" in entry_points,
        "the devcluster wheel adds `litefs-route dev` and the pytest fixtures",
    )


def write_asgi_app(folder: str) -> str:
    with open(os.path.join(folder, "smoke_asgi.py"), "w") as f:
        f.write(
            "from litefs_route.asgi import PrimaryRoutingMiddleware\n"
            "async def inner(scope, receive, send):\n"
            "    if scope['type'] != 'http':\n"
            "        return\n"
            "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
            "    await send({'type': 'http.response.body', 'body': b'hi'})\n"
            "app = PrimaryRoutingMiddleware(inner)\n"
        )
    return "smoke_asgi:app"


def dev(what: str, args: list[str], cwd: str | None = None) -> None:
    done = subprocess.run(
        [COMMAND, "dev", *args, "--port", "0", "--instances", "2", "-q"],
        input="status\nquit\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    ok = done.returncode == 0 and "ready: front http://127.0.0.1:" in done.stdout and "Traceback" not in done.stderr
    if not ok:
        print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
    check(ok, f"litefs-route dev runs {what}")


if __name__ == "__main__":
    if sys.argv[1] == "contents":
        contents(*sys.argv[2:4])
    else:
        {"core": core, "cluster": cluster}[sys.argv[1]]()
