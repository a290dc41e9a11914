from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from examples.local_mount import make_mount
from litefs_route_devcluster import free_port, port_open, wait_for
from litefs_route_devcluster.cluster import stop_process_group

PRIMARY_ID = "e784079b449483"
REPLICA_ID = "3d8d9e5b711e68"
ROOT = Path(__file__).resolve().parent.parent

ServeExample = Callable[[str, str], AbstractContextManager[str]]


@contextmanager
def run_server(argv: list[str], port: int, env: dict[str, str]) -> Iterator[str]:
    """Run a server command in its own process group; yields its base URL.

    Stops the whole group on exit, even when the test failed.
    """
    process = subprocess.Popen(argv, env={**os.environ, **env}, start_new_session=True)

    def accepting() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {argv}")
        return port_open("127.0.0.1", port)

    try:
        wait_for(accepting, timeout=30, message=f"{argv[0]} did not listen on {port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(process, 10, argv[0])


@pytest.fixture
def serve_example(tmp_path: Path) -> ServeExample:
    """serve_example(server, role) runs an example in a real server process.

    Both roles share one database file, as LiteFS would show the replica a
    copy of the primary's: this tests routing, not replication.
    """
    shared = tmp_path / "db"
    shared.mkdir()

    def serve(server: str, role: str) -> AbstractContextManager[str]:
        mount = make_mount(tmp_path / role, None if role == "primary" else PRIMARY_ID)
        db = mount / "app.db"
        if not db.exists():
            db.symlink_to(shared / "app.db")
        port = free_port()
        gunicorn = [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}"]
        uvicorn = [sys.executable, "-m", "uvicorn", "--port", str(port)]
        argv = {
            "gunicorn": [*gunicorn, "examples.flask_app.app:app"],
            "uvicorn": [*uvicorn, "examples.starlette_app.app:app"],
            "django-gunicorn": [*gunicorn, "examples.django_app.wsgi"],
            "django-uvicorn": [*uvicorn, "examples.django_app.asgi:application"],
            "django-runserver": [sys.executable, "-m", "django", "runserver", "--noreload", f"127.0.0.1:{port}"],
        }[server]
        env = {
            "LITEFS_DIR": str(mount),
            "DATABASE_FILENAME": "app.db",
            "FLY_MACHINE_ID": PRIMARY_ID if role == "primary" else REPLICA_ID,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "examples.django_app.settings",
        }
        return run_server(argv, port, env)

    return serve
