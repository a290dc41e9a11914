from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.support import Mount, free_port, run_server

PRIMARY_ID = "e784079b449483"
REPLICA_ID = "3d8d9e5b711e68"
ROOT = Path(__file__).resolve().parent.parent

ServeExample = Callable[[str, str], AbstractContextManager[str]]


@pytest.fixture
def serve_example(tmp_path: Path) -> ServeExample:
    """serve_example(server, role) runs an example in a real server process.

    Both roles share one database file, as LiteFS would show the replica a
    copy of the primary's: this tests routing, not replication.
    """
    shared = tmp_path / "db"
    shared.mkdir()

    def serve(server: str, role: str) -> AbstractContextManager[str]:
        mount = Mount(tmp_path / role)
        if role == "primary":
            mount.make_primary()
        else:
            mount.make_replica(PRIMARY_ID)
        db = mount.path / "app.db"
        if not db.exists():
            db.symlink_to(shared / "app.db")
        port = free_port()
        if server == "gunicorn":
            app = "examples.flask_app.app:app"
            argv = [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", app]
        else:
            argv = [sys.executable, "-m", "uvicorn", "--port", str(port), "examples.starlette_app.app:app"]
        env = {
            "LITEFS_DIR": str(mount.path),
            "DATABASE_FILENAME": "app.db",
            "FLY_MACHINE_ID": PRIMARY_ID if role == "primary" else REPLICA_ID,
            "PYTHONPATH": str(ROOT),
        }
        return run_server(argv, port, env)

    return serve
