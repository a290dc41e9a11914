"""Django, first class: ``litefs_route.django`` under gunicorn (WSGI) and uvicorn (ASGI), DEBUG on and off.

The project is ``tests/django_project``: views that call ``ensure_primary()``
every way a Django app does, Django's ``ADMINS`` mail written to files, every
log record and every ``got_request_exception`` on the server's stderr. A
normal replay must leave no trace in any of them; a real error still must
(``/boom``: the witnesses work). Real LiteFS where LiteFS decides the outcome
(SQLite's read-only refusal, the admin replayed through the front proxy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from litefs_route_devcluster import free_port
from tests.support import Mount, logged, server_process

if TYPE_CHECKING:
    from litefs_route_devcluster.pytest_plugin import LiteFSClusterFactory

ROOT = Path(__file__).resolve().parent.parent
PRIMARY = "e784079b449483"
MB = 1_000_000
REPLICA = "3d8d9e5b711e68"

SERVERS = {
    "gunicorn": ["-m", "gunicorn", "-w", "1", "tests.django_project.wsgi"],
    "uvicorn": ["-m", "uvicorn", "tests.django_project.asgi:application"],
}


@dataclass
class DjangoServer:
    url: str
    log: Path
    mail_dir: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def mails(self) -> list[str]:
        return [p.read_text(errors="replace") for p in sorted(self.mail_dir.iterdir())]


@contextmanager
def django_server(
    tmp_path: Path,
    server: str,
    mount: Path,
    instance: str,
    *,
    debug: bool,
    options: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[DjangoServer]:
    """The test project in a real server process on *mount* as *instance*."""
    port = free_port()
    bind = ["-b", f"127.0.0.1:{port}"] if server == "gunicorn" else ["--port", str(port)]
    run = tmp_path / f"{server}-{instance}-{port}"
    run.mkdir()
    mail_dir = run / "mail"
    mail_dir.mkdir()
    env = {
        "LITEFS_DIR": str(mount),
        "LITEFS_API_URL": "off",  # a written folder: no LiteFS API to follow
        "FLY_MACHINE_ID": instance,
        "DJANGO_DEBUG": "1" if debug else "0",
        "MAIL_DIR": str(mail_dir),
        "LITEFS_ROUTE_JSON": json.dumps(options or {}),
        **(env or {}),
    }
    with server_process([sys.executable, *SERVERS[server], *bind], port, env, run / "server.log") as process:
        yield DjangoServer(process.url, process.log, mail_dir)


@pytest.fixture(params=["gunicorn", "uvicorn"])
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=[False, True], ids=["debug-off", "debug-on"])
def debug(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


# Each guarded view: how it is asked for, and what it answers where it runs.
GUARDED: list[tuple[str, str, str]] = [
    ("GET", "/function", "function"),  # a function view
    ("GET", "/class", "class"),  # a class-based view
    ("GET", "/swallowed", "swallowed"),  # inside try/except Exception
    ("GET", "/template", "ran in a template"),  # a template the view renders
    ("GET", "/template-response", "ran in a template"),  # a TemplateResponse Django renders
    ("GET", "/drf", '{"ran":"drf"}'),  # a Django REST framework view
]


def test_ensure_primary_on_a_replica_is_a_replay_and_nothing_else(
    tmp_path: Path, mount: Mount, server: str, debug: bool
) -> None:
    """Every guarded view ends in the replay: no error log, no signal, no ADMINS mail; a real error still reports."""
    mount.make_replica(PRIMARY)
    with (
        django_server(tmp_path, server, mount.path, REPLICA, debug=debug) as django,
        httpx.Client(base_url=django.url) as client,
    ):
        responses = {path: client.request(method, path) for method, path, _ in GUARDED}
        responses["/instance/other"] = client.get("/instance/other")
        responses["/drf (POST)"] = client.post("/drf", json={})
        counted = client.get("/counters").json()
        quiet_log = django.output()
        quiet_mails = django.mails()
        boom = client.get("/boom")
    for path, response in responses.items():
        target = "other" if path == "/instance/other" else PRIMARY
        assert (path, response.status_code) == (path, 409), response.text
        assert (
            response.headers["fly-replay"]
            == f"instance={target};state=litefs-route-hop-1;timeout=5s;fallback=force_self"
        )
        assert response.headers["fly-instance"] == REPLICA
        assert response.headers["fly-primary-instance"] == PRIMARY
    assert counted["replays"] == len(responses)  # how an app exposes the counters
    assert "SIGNAL" not in quiet_log
    assert "LOG ERROR" not in quiet_log
    assert "LOG WARNING django" not in quiet_log  # django.request logs a 409 as a warning unless told not to
    assert "Traceback" not in quiet_log
    assert quiet_mails == []
    # The witnesses see a real error: the middleware hides nothing else.
    assert boom.status_code == 500
    log = django.output()
    assert "LOG ERROR django.request: Internal Server Error: /boom" in log
    assert "SIGNAL got_request_exception" in log
    if debug:
        assert django.mails() == []  # Django mails ADMINS only with DEBUG off
    else:
        [mail] = django.mails()
        assert "Internal Server Error: /boom" in mail


def test_ensure_primary_on_the_primary_runs_the_view(tmp_path: Path, mount: Mount, server: str) -> None:
    mount.make_primary()
    with (
        django_server(tmp_path, server, mount.path, PRIMARY, debug=False) as django,
        httpx.Client(base_url=django.url) as client,
    ):
        for method, path, ran in GUARDED:
            response = client.request(method, path)
            assert (path, response.status_code, response.text) == (path, 200, ran)
            assert response.headers["fly-instance"] == PRIMARY
            assert response.headers["fly-primary-instance"] == PRIMARY
        here = client.get(f"/instance/{PRIMARY}")
    assert (here.status_code, here.text) == (200, f"ran on {PRIMARY}")
    assert "LOG ERROR" not in django.output()


def test_writes_on_a_replica_are_replayed_before_the_view_and_reads_run(
    tmp_path: Path, mount: Mount, server: str
) -> None:
    mount.make_replica(PRIMARY)
    with (
        django_server(tmp_path, server, mount.path, REPLICA, debug=False) as django,
        httpx.Client(base_url=django.url) as client,
    ):
        write = client.post("/write", data={"id": "w1"})
        chunked = client.post("/write", content=iter([b"id=w2"]))  # no Content-Length
        read = client.get("/read")
    for response in (write, chunked):
        assert response.status_code == 409
        assert (
            response.headers["fly-replay"]
            == f"instance={PRIMARY};state=litefs-route-hop-1;timeout=5s;fallback=force_self"
        )
    assert (read.status_code, read.json()) == (200, {"read_on": REPLICA})
    assert not (mount.path / "app.db").exists()  # the write never ran here


def test_the_health_check_and_settings_options(tmp_path: Path, mount: Mount, server: str) -> None:
    """LITEFS_ROUTE maps onto the options: here health_path, max_lag and write_on_read."""
    mount.make_replica(PRIMARY, lag_ms=2500)
    options = {"health_path": "/litefs/health", "max_lag": 2, "write_on_read": ["/read"]}
    with (
        django_server(tmp_path, server, mount.path, REPLICA, debug=False, options=options) as django,
        httpx.Client(base_url=django.url) as client,
    ):
        unhealthy = client.get("/litefs/health")
        mount.set_lag(10)
        healthy = client.get("/litefs/health")
        read = client.get("/read")
    assert unhealthy.status_code == 503
    assert (healthy.status_code, healthy.text) == (200, "OK\n")
    assert read.status_code == 409  # write_on_read
    assert "LOG ERROR" not in django.output()  # a failed health check is not a server error


def test_forward_mode_in_django(tmp_path: Path, server: str) -> None:
    """A 3 MB write to a Django replica is forwarded to the Django primary and relayed; a small one is replayed."""
    import hashlib

    primary_mount, replica_mount = Mount(tmp_path / "primary"), Mount(tmp_path / "replica")
    primary_mount.make_primary()
    replica_mount.make_replica(PRIMARY)
    secret = {"LITEFS_ROUTE_FORWARD_SECRET": "a-secret-for-django-forwarding"}
    body = bytes(range(256)) * (3 * 1_000_000 // 256)
    with django_server(tmp_path, server, primary_mount.path, PRIMARY, debug=False, env=secret) as primary:
        options = {"forward": "oversize", "forward_url": primary.url}
        with (
            django_server(
                tmp_path, server, replica_mount.path, REPLICA, debug=False, options=options, env=secret
            ) as replica,
            httpx.Client(base_url=replica.url, timeout=60) as client,
        ):
            large = client.post("/upload", content=body)
            chunked = client.post("/upload", content=iter([body[:MB], body[MB:]]))  # no Content-Length
            small = client.post("/upload", content=b"small")
    assert large.status_code == 200, large.text[:300]
    assert large.json() == {"instance": PRIMARY, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    assert large.headers["fly-instance"] == PRIMARY
    if server == "uvicorn":  # Django's ASGI handler has the whole body: forwarded, sent chunked
        assert chunked.json() == large.json()
    else:  # under WSGI Django reads no chunked body: measured as empty, it is replayed (as Django would see it)
        assert chunked.status_code == 409
    assert small.status_code == 409
    assert "LOG ERROR" not in replica.output()
    assert "must consume synchronous iterators" not in replica.output()  # ASGI: relayed by an async iterator


def test_an_unknown_option_stops_the_server_with_a_clear_error(tmp_path: Path, mount: Mount) -> None:
    mount.make_primary()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITEFS_DIR": str(mount.path),
        "DJANGO_SETTINGS_MODULE": "tests.django_project.settings",
        "LITEFS_ROUTE_JSON": json.dumps({"write_on_reads": ["/x"]}),
    }
    code = "from django.core.wsgi import get_wsgi_application; get_wsgi_application()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ImproperlyConfigured: settings.LITEFS_ROUTE names no option 'write_on_reads'" in result.stderr


_MODES = """
import gc
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from litefs_route.django import PrimaryRoutingMiddleware
get_wsgi_application(), get_asgi_application()
print(sorted(m.async_mode for m in gc.get_objects() if isinstance(m, PrimaryRoutingMiddleware)))
"""


def test_django_runs_the_middleware_in_its_own_mode_without_a_thread_hop() -> None:
    """Sync under WSGI, async under ASGI: Django adapts nothing around it (no sync_to_async per request)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "tests.django_project.settings"}
    env.pop("LITEFS_DIR", None)
    result = subprocess.run([sys.executable, "-c", _MODES], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[False, True]"


# -- system checks -------------------------------------------------------------------------------

_CHECK = """
import json, sys
import django
from django.conf import settings
settings.configure(**json.loads(sys.argv[1]))
django.setup()
from django.core.checks import run_checks
print(json.dumps(sorted(m.id for m in run_checks() if m.id.startswith("litefs_route."))))
"""

_OURS = "litefs_route.django.PrimaryRoutingMiddleware"
_SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"


def _sqlite(path: str) -> dict[str, Any]:
    return {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}}


@pytest.mark.parametrize(
    ("settings", "env", "expected"),
    [
        pytest.param({"MIDDLEWARE": [_OURS, _SESSIONS]}, {}, [], id="first-and-standalone"),
        pytest.param({"MIDDLEWARE": [_SESSIONS, _OURS]}, {}, ["litefs_route.E003"], id="E003-after-sessions"),
        pytest.param(
            {"MIDDLEWARE": ["django.middleware.csrf.CsrfViewMiddleware", _OURS]},
            {},
            ["litefs_route.E003"],
            id="E003-after-csrf",
        ),
        pytest.param(
            {"MIDDLEWARE": ["django.middleware.security.SecurityMiddleware", _OURS]},
            {},
            [],
            id="after-security-is-fine",
        ),
        pytest.param({"MIDDLEWARE": ["some.app.Middleware", _OURS]}, {}, ["litefs_route.W001"], id="W001-not-first"),
        pytest.param({"MIDDLEWARE": [_SESSIONS]}, {}, ["litefs_route.W004"], id="W004-not-in-middleware"),
        pytest.param(
            {"MIDDLEWARE": [_OURS], "LITEFS_ROUTE": {"write_on_reads": []}},
            {},
            ["litefs_route.E001"],
            id="E001-unknown-option",
        ),
        pytest.param(
            {"MIDDLEWARE": [_OURS], "LITEFS_ROUTE": {"max_replays": 20}}, {}, ["litefs_route.E001"], id="E001-bad-value"
        ),
        pytest.param(
            {"MIDDLEWARE": [_OURS]}, {"LITEFS_DIR": "{tmp}/missing"}, ["litefs_route.E002"], id="E002-mount-missing"
        ),
        pytest.param(
            {"MIDDLEWARE": [_OURS], "DATABASES": _sqlite("{tmp}/elsewhere/app.db")},
            {"LITEFS_DIR": "{tmp}/mount", "DATABASE_FILENAME": "app.db"},
            ["litefs_route.W002"],
            id="W002-database-outside-the-mount",
        ),
        pytest.param(
            {"MIDDLEWARE": [_OURS], "DATABASES": _sqlite("{tmp}/mount/app.db")},
            {"LITEFS_DIR": "{tmp}/mount"},
            ["litefs_route.W003"],
            id="W003-read-your-writes-off",
        ),
        pytest.param(
            {"MIDDLEWARE": [_OURS], "DATABASES": _sqlite("{tmp}/mount/app.db"), "LITEFS_ROUTE": {"database": "app.db"}},
            {"LITEFS_DIR": "{tmp}/mount"},
            [],
            id="database-in-the-mount-with-read-your-writes",
        ),
    ],
)
def test_system_checks(tmp_path: Path, settings: dict[str, Any], env: dict[str, str], expected: list[str]) -> None:
    (tmp_path / "mount").mkdir()

    def placed(value: Any) -> Any:
        return json.loads(json.dumps(value).replace("{tmp}", str(tmp_path)))

    configured = {"INSTALLED_APPS": ["litefs_route.django"], **placed(settings)}
    environment = {k: v for k, v in os.environ.items() if k not in ("LITEFS_DIR", "DATABASE_FILENAME")}
    result = subprocess.run(
        [sys.executable, "-c", _CHECK, json.dumps(configured)],
        env={**environment, **placed(env), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected


# -- on real LiteFS ------------------------------------------------------------------------------

DJANGO_APPS = [
    pytest.param("tests.django_project.wsgi:application", id="wsgi"),
    pytest.param("tests.django_project.asgi:application", id="asgi"),
]


def _on(instance: str) -> dict[str, str]:
    return {"fly-force-instance-id": instance}


@pytest.mark.litefs
@pytest.mark.parametrize("app", DJANGO_APPS)
def test_the_safety_net_catches_an_orm_write_on_a_real_replica(
    litefs_real_cluster: LiteFSClusterFactory, app: str
) -> None:
    """Django wraps SQLite's refusal in its OperationalError; the request is replayed, not a 500 nor a report."""
    cluster = litefs_real_cluster(app, instances=["node1", "node2"], lease="static")
    cluster.wait_replicated()
    with httpx.Client(base_url=cluster.front_url, timeout=30) as client:
        first = client.get("/unguarded-write", headers=_on("node1"))  # creates the table on the primary
        cluster.wait_replicated()
        response = client.get("/unguarded-write", headers=_on("node2"))
    assert first.json() == {"instance": "node1"}
    assert (response.status_code, response.json()) == (200, {"instance": "node1"}), response.text
    [replay] = cluster.front.replays
    assert (replay.from_instance, replay.to_instance) == ("node2", "node1")
    replica_log = logged(cluster.instances["node2"].log_path, "did not run: the database refused its write")  # ours
    assert "SIGNAL" not in replica_log
    assert "LOG ERROR" not in replica_log


def _admin_login(client: httpx.Client, on: str) -> httpx.Response:
    client.get("/admin/login/", headers=_on(on))  # sets the CSRF cookie, served where it lands
    token = client.cookies["csrftoken"]
    return client.post(
        "/admin/login/?next=/admin/",
        data={"username": "admin", "password": "correct horse", "csrfmiddlewaretoken": token},
        headers={**_on(on), "referer": "http://127.0.0.1/admin/login/"},
    )


@pytest.mark.litefs
def test_the_django_admin_works_on_a_real_replica(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """Login and the change form are replayed to the primary; the changelist is served by the replica."""
    cluster = litefs_real_cluster("examples.django_app.wsgi:application", instances=["node1", "node2"], lease="static")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "examples.django_app.settings",
        "LITEFS_DIR": cluster.mount_dir("node1"),
        "DATABASE_FILENAME": "app.db",
        "DJANGO_SUPERUSER_PASSWORD": "correct horse",
    }
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "createsuperuser",
            "--noinput",
            "--username",
            "admin",
            "--email",
            "admin@example.com",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    cluster.wait_replicated()
    with httpx.Client(base_url=cluster.front_url, timeout=30) as client:
        login = _admin_login(client, "node2")
        assert login.status_code == 302, login.text
        assert login.headers["location"] == "/admin/"
        changelist = client.get("/admin/django_app/entry/", headers=_on("node2"))
        assert changelist.status_code == 200
        assert changelist.headers["fly-instance"] == "node2"  # a read: served by the replica
        add = client.post(
            "/admin/django_app/entry/add/",
            data={"text": "from the admin", "written_on": "admin", "csrfmiddlewaretoken": client.cookies["csrftoken"]},
            headers={**_on("node2"), "referer": "http://127.0.0.1/admin/django_app/entry/add/"},
        )
        assert add.status_code == 302, add.text
        assert add.headers["fly-instance"] == "node1"
        listed = client.get("/admin/django_app/entry/", headers=_on("node2"))
    assert [(r.from_instance, r.to_instance) for r in cluster.front.replays] == [("node2", "node1")] * 2
    assert "from the admin" in listed.text  # read-your-writes: the replica waited for the change
    assert listed.headers["fly-instance"] == "node2"
