from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import ADAPTERS, Mount


@pytest.fixture
def mount(tmp_path: Path) -> Mount:
    """A fresh LiteFS-format mount directory; starts as a primary."""
    m = Mount(tmp_path / "litefs")
    m.make_primary()
    return m


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    """Runs a test under each adapter: "wsgi" (Flask on Werkzeug), then "asgi" (Starlette on uvicorn).

    Serve with ``tests.support.serve_under(adapter, ...)``.
    """
    return str(request.param)


@pytest.fixture(autouse=True)
def _no_fly_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests say which mount and instance they mean; the host's env must not leak in.
    for name in ("LITEFS_DIR", "FLY_MACHINE_ID", "FLY_REGION", "FLY_APP_NAME", "DATABASE_FILENAME", "LITEFS_API_URL"):
        monkeypatch.delenv(name, raising=False)
