"""Primary sources: the ``source`` option, a fixed primary instance, and region routing's state without a database.

Postgres itself, on real PostgreSQL, is tested in ``tests/test_postgres_*.py``;
LiteFS, the default source, by every other module.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from litefs_route import (
    LiteFSSource,
    PostgresSource,
    PrimarySource,
    StaticSource,
    get_instance_info,
    is_primary,
    wsgi,
)
from litefs_route._postgres_source import region_state
from litefs_route._sqlite_errors import WriteFailureKind
from tests.support import serve_wsgi


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ran here"]


OPTION_ERRORS = [
    # (id, options, exception, words in its message)
    ("source-and-litefs-dir", {"source": StaticSource("node1"), "litefs_dir": "/litefs"}, TypeError, "not both"),
    ("source-and-database", {"source": "postgres", "database": "app.db"}, TypeError, "not both"),
    ("unknown-source-name", {"source": "mysql"}, ValueError, "'litefs', 'postgres' or a PrimarySource"),
    ("not-a-source", {"source": object()}, ValueError, "PrimarySource"),
]


@pytest.mark.parametrize(
    ("options", "error", "words"), [c[1:] for c in OPTION_ERRORS], ids=[c[0] for c in OPTION_ERRORS]
)
def test_source_option_errors(options: dict[str, Any], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        wsgi.PrimaryRoutingMiddleware(_app, **options)


def _postgres(primary_region: str = "ord", region: str = "lhr") -> PostgresSource:
    return PostgresSource("postgresql://h/x", primary_region=primary_region, region=region)


SOURCE_ERRORS = [
    # (id, build, words): a region or an instance goes into fly-replay and a header, so it is checked.
    ("postgres-without-dsn", lambda: PostgresSource(primary_region="ord", region="lhr"), "dsn"),
    ("postgres-without-regions", lambda: PostgresSource("postgresql://127.0.0.1/x"), "primary_region"),
    ("postgres-header-injection", lambda: _postgres(primary_region="ord\r\nx: y"), "region name"),
    ("postgres-replay-field-injection", lambda: _postgres(primary_region="ord;instance=evil"), "region name"),
    ("postgres-region-injection", lambda: _postgres(region="lhr,evil"), "region name"),
    ("static-without-instance", lambda: StaticSource(), "PRIMARY_INSTANCE"),
    ("static-header-injection", lambda: StaticSource("node1\nx"), "instance id"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "words"), [c[1:] for c in SOURCE_ERRORS], ids=[c[0] for c in SOURCE_ERRORS])
def test_sources_refuse_bad_configuration(build: Any, words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DATABASE_URL", "PRIMARY_REGION", "FLY_REGION", "PRIMARY_INSTANCE"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ValueError, match=words):
        build()


def test_the_shipped_sources_follow_the_protocol() -> None:
    assert isinstance(LiteFSSource(None), PrimarySource)
    assert isinstance(StaticSource("node1"), PrimarySource)


@pytest.mark.parametrize(("instance", "status"), [("node1", 200), ("node2", 409)], ids=["on-the-primary", "elsewhere"])
def test_a_static_primary_takes_every_write(instance: str, status: int) -> None:
    """StaticSource: writes run on the named instance and are replayed to it by instance from any other."""
    app = wsgi.PrimaryRoutingMiddleware(_app, source=StaticSource("node1"), instance_id=instance)
    with serve_wsgi(app) as url:
        write = httpx.post(url + "/items", content=b"x")
        read = httpx.get(url + "/items")
    assert write.status_code == status
    assert write.headers["Fly-Primary-Instance"] == "node1"
    assert write.headers["Fly-Instance"] == instance
    if status == 409:
        assert write.headers["fly-replay"] == "instance=node1;state=litefs-route-hop-1;timeout=5s;fallback=force_self"
    assert (read.status_code, read.text) == (200, "ran here")  # a read runs where it lands


def test_a_static_sources_safety_net_is_sqlites(tmp_path: Path) -> None:
    """A write SQLite refuses as read-only on a replica is REFUSED: nothing ran, so it is replayed."""
    db = sqlite3.connect(tmp_path / "app.db")
    db.execute("CREATE TABLE t (x)")
    db.close()
    readonly = sqlite3.connect(f"file:{tmp_path / 'app.db'}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as caught:
        readonly.execute("INSERT INTO t VALUES (1)")
    failure = StaticSource("node1").classify_failure(caught.value)
    assert failure is not None
    assert failure.kind is WriteFailureKind.REFUSED


@pytest.mark.parametrize(
    ("region", "primary"), [("ord", True), ("lhr", False)], ids=["in-the-primary-region", "in-another-region"]
)
def test_background_work_follows_the_regions_without_a_middleware(
    region: str, primary: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with PRIMARY_REGION and FLY_REGION and no LiteFS mount: primary only in the primary region."""
    monkeypatch.delenv("LITEFS_DIR", raising=False)
    # An instance of its own: a middleware another test left alive in this process would otherwise be the one asked.
    monkeypatch.setenv("FLY_MACHINE_ID", f"worker-{region}")
    monkeypatch.setenv("PRIMARY_REGION", "ord")
    monkeypatch.setenv("FLY_REGION", region)
    assert is_primary() is primary
    info = get_instance_info()
    assert (info.is_primary, info.primary_instance, info.region) == (primary, "ord", region)


def test_the_region_state_names_the_primary_region() -> None:
    replica = region_state("m1", "lhr", "ord", 12)
    assert (replica.primary_id, replica.primary_is_region, replica.is_primary, replica.lag_ms) == (
        "ord",
        True,
        False,
        12,
    )
    assert region_state("m1", "ord", "ord", 0).is_primary
