"""The read-only safety net for Postgres: a hot standby's SQLSTATE 25006 (read_only_sql_transaction)
proves nothing of the write ran, through every driver and ORM an app uses.

Real errors from a real hot standby (the ``postgres_pair`` fixture): psycopg 3, psycopg2,
SQLAlchemy on each, and Django on each (in a subprocess: Django is configured once per
process). Each is classified REFUSED by ``classify_write_failure(exc, classify_postgres_one)``;
the app's own errors (a unique violation, a syntax error, a missing table) are not, and the
SQLite classifier (the default) leaves every Postgres error alone.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import psycopg2
import psycopg2.errors
import pytest
import sqlalchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from litefs_route._sqlite_errors import (
    READ_ONLY_SQL_TRANSACTION,
    WriteFailureKind,
    classify_postgres_one,
    classify_write_failure,
    is_readonly_error,
)
from litefs_route_devcluster.postgres import PostgresPair
from litefs_route_devcluster.pytest_plugin import PostgresPairFactory
from tests.support import ROOT

READ_ONLY_MESSAGE = "cannot execute INSERT in a read-only transaction"


@pytest.fixture
def pair(postgres_pair: PostgresPairFactory) -> PostgresPair:
    made = postgres_pair()
    made.query("primary", "CREATE TABLE t (x int PRIMARY KEY)")
    made.query("primary", "INSERT INTO t VALUES (1)")
    made.wait_caught_up(10)
    return made


def _raised(action: Callable[[], object]) -> BaseException:
    try:
        action()
    except Exception as exc:
        return exc
    raise AssertionError("no error was raised")


def _assert_refused(exc: BaseException) -> None:
    failure = classify_write_failure(exc, classify_postgres_one)
    assert failure is not None, repr(exc)
    assert failure.kind is WriteFailureKind.REFUSED
    assert failure.code is None
    assert failure.detail == f"SQLSTATE 25006: {READ_ONLY_MESSAGE}"
    # The SQLite classifier (the default) is LiteFS's: it leaves it alone; is_readonly_error asks both.
    assert classify_write_failure(exc) is None
    assert is_readonly_error(exc)


def _assert_apps_own(exc: BaseException) -> None:
    assert classify_write_failure(exc, classify_postgres_one) is None, repr(exc)
    assert classify_write_failure(exc) is None
    assert not is_readonly_error(exc)


def _sqlalchemy_url(dsn: str, driver: str) -> str:
    return dsn.replace("postgresql://", f"postgresql+{driver}://", 1)


# -- the drivers ------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_psycopg3_on_the_standby(pair: PostgresPair) -> None:
    with psycopg.connect(pair.standby_dsn, autocommit=True) as conn:
        exc = _raised(lambda: conn.execute("INSERT INTO t VALUES (2)"))
        assert isinstance(exc, psycopg.errors.ReadOnlySqlTransaction)
        assert exc.sqlstate == READ_ONLY_SQL_TRANSACTION
        _assert_refused(exc)
    with psycopg.connect(pair.standby_dsn) as conn:  # in a transaction, after a read
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
        _assert_refused(_raised(lambda: conn.execute("INSERT INTO t VALUES (2)")))
    assert pair.query("primary", "SELECT count(*) FROM t") == "1"


@pytest.mark.postgres
def test_psycopg2_on_the_standby(pair: PostgresPair) -> None:
    conn = psycopg2.connect(pair.standby_dsn)
    try:
        with conn.cursor() as cursor:
            exc = _raised(lambda: cursor.execute("INSERT INTO t VALUES (2)"))
        assert isinstance(exc, psycopg2.errors.ReadOnlySqlTransaction)
        assert exc.pgcode == READ_ONLY_SQL_TRANSACTION
        assert getattr(exc, "sqlstate", None) is None  # psycopg2 names it pgcode only
        _assert_refused(exc)
    finally:
        conn.close()


@pytest.mark.postgres
def test_the_apps_own_errors_are_left_alone(pair: PostgresPair) -> None:
    with psycopg.connect(pair.primary_dsn, autocommit=True) as conn:
        duplicate = _raised(lambda: conn.execute("INSERT INTO t VALUES (1)"))
        assert isinstance(duplicate, psycopg.errors.UniqueViolation)
        _assert_apps_own(duplicate)
    with psycopg.connect(pair.standby_dsn, autocommit=True) as conn:
        syntax = _raised(lambda: conn.execute("INSERT INTO t VALUE (2)"))
        assert isinstance(syntax, psycopg.errors.SyntaxError)
        _assert_apps_own(syntax)
        missing = _raised(lambda: conn.execute("SELECT * FROM nowhere"))
        assert isinstance(missing, psycopg.errors.UndefinedTable)
        _assert_apps_own(missing)
    conn2 = psycopg2.connect(pair.primary_dsn)
    try:
        with conn2.cursor() as cursor:
            duplicate2 = _raised(lambda: cursor.execute("INSERT INTO t VALUES (1)"))
        assert isinstance(duplicate2, psycopg2.errors.UniqueViolation)
        _assert_apps_own(duplicate2)
    finally:
        conn2.close()


def test_sqlites_read_only_answer_is_litefss_not_postgress() -> None:
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE TABLE t (x)")
        db.execute("PRAGMA query_only = 1")
        exc = _raised(lambda: db.execute("INSERT INTO t VALUES (1)"))
    finally:
        db.close()
    assert "attempt to write a readonly database" in str(exc)
    sqlite_failure = classify_write_failure(exc)
    assert sqlite_failure is not None
    assert sqlite_failure.kind is WriteFailureKind.REFUSED
    assert classify_write_failure(exc, classify_postgres_one) is None


# -- SQLAlchemy, on each driver -----------------------------------------------------------------------


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "t"
    x: Mapped[int] = mapped_column(primary_key=True)


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sqlalchemy_on_the_standby(pair: PostgresPair, driver: str) -> None:
    engine = sqlalchemy.create_engine(_sqlalchemy_url(pair.standby_dsn, driver))
    try:
        with engine.connect() as conn:
            core = _raised(lambda: conn.execute(sqlalchemy.text("INSERT INTO t VALUES (2)")))
        assert isinstance(core, sqlalchemy.exc.DBAPIError)
        assert type(core.orig).__module__.startswith(driver + ".")
        _assert_refused(core)
        with Session(engine) as session:
            session.add(_Row(x=3))
            orm = _raised(session.commit)
        assert isinstance(orm, sqlalchemy.exc.DBAPIError)
        _assert_refused(orm)
    finally:
        engine.dispose()
    primary = sqlalchemy.create_engine(_sqlalchemy_url(pair.primary_dsn, driver))
    try:
        with Session(primary) as session:
            session.add(_Row(x=1))
            duplicate = _raised(session.commit)
        assert isinstance(duplicate, sqlalchemy.exc.IntegrityError)
        _assert_apps_own(duplicate)
    finally:
        primary.dispose()


# -- Django, on each driver (a process each: settings are configured once per process) ---------------

_DJANGO = """
import json, sys
options = json.loads(sys.argv[1])
if options["driver"] == "psycopg2":
    sys.modules["psycopg"] = None  # Django's postgresql backend then takes psycopg2
import django
from django.conf import settings
settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": "postgres", "USER": "postgres",
    "HOST": "127.0.0.1", "PORT": options["port"],
}})
django.setup()
from django.db import connection, transaction
from litefs_route._sqlite_errors import classify_postgres_one, classify_write_failure

def attempt(sql):
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    except Exception as exc:
        failure = classify_write_failure(exc, classify_postgres_one)
        return {
            "error": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "cause": type(exc.__cause__).__module__ if exc.__cause__ is not None else None,
            "kind": None if failure is None else failure.kind.value,
            "detail": None if failure is None else failure.detail,
        }
    return {"error": None}

print(json.dumps({"driver": connection.Database.__name__, "result": attempt(options["sql"])}))
"""


def _django(port: int, driver: str, sql: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-c", _DJANGO, json.dumps({"port": port, "driver": driver, "sql": sql})],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(ROOT),
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, object] = json.loads(result.stdout)
    assert found["driver"] == driver  # the backend really used that driver
    return found


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_django_on_the_standby(pair: PostgresPair, driver: str) -> None:
    refused = _django(pair.standby.port, driver, "INSERT INTO t VALUES (2)")["result"]
    assert refused == {
        "error": "django.db.utils.InternalError",
        "cause": f"{driver}.errors",
        "kind": "refused",
        "detail": f"SQLSTATE 25006: {READ_ONLY_MESSAGE}",
    }
    duplicate = _django(pair.primary.port, driver, "INSERT INTO t VALUES (1)")["result"]
    assert duplicate == {
        "error": "django.db.utils.IntegrityError",
        "cause": f"{driver}.errors",
        "kind": None,
        "detail": None,
    }
    assert pair.query("primary", "SELECT count(*) FROM t") == "1"
