"""Postgres WAL positions (``litefs_route._postgres``): the LSN text a cookie carries, and the
position reader against a real primary and hot standby (the ``postgres_pair`` fixture).

No sleeps standing in for synchronisation: the standby's replay is held back with
``pg_wal_replay_pause()``, and every wait is on a condition the servers report.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from litefs_route._postgres import POLL_INTERVAL, PostgresPositionReader, format_lsn, parse_lsn
from litefs_route_devcluster import free_port, release_port, wait_for
from litefs_route_devcluster.postgres import PostgresPair
from litefs_route_devcluster.pytest_plugin import PostgresPairFactory
from tests.support import ROOT

# -- the text of a position ------------------------------------------------------------------------

LSN_CASES = [
    ("0/0", 0),
    ("0/3001148", 0x3001148),
    ("16/B374D848", 0x16_B374D848),
    ("16/b374d848", 0x16_B374D848),
    ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
    ("00000001/00000000", 1 << 32),
    ("", None),
    ("/", None),
    ("0/", None),
    ("/0", None),
    ("0", None),
    ("0/0/0", None),
    ("123456789/0", None),
    ("0/123456789", None),
    (" 0/0", None),
    ("0/0 ", None),
    ("0/0\n", None),
    ("+1/0", None),
    ("-1/0", None),
    ("0x1/0", None),
    ("1_0/0", None),
    ("G/0", None),
    ("\u0663/0", None),  # an Arabic-Indic digit three: int() would take it
    ("\uff11/0", None),  # a fullwidth digit one
    ("0/0" + "0" * 10_000, None),
    ("0/%30", None),
]


def _lsn_id(case: tuple[str, int | None]) -> str:
    text, expected = case
    shown = repr(text) if len(text) <= 20 else f"{text[:12]!r}...({len(text)} chars)"
    return f"{shown}->{'None' if expected is None else hex(expected)}"


@pytest.mark.parametrize(("text", "expected"), LSN_CASES, ids=[_lsn_id(c) for c in LSN_CASES])
def test_parse_lsn(text: str, expected: int | None) -> None:
    assert parse_lsn(text) == expected


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0/0"), (0x3001148, "0/3001148"), (0x16_B374D848, "16/B374D848"), (2**64 - 1, "FFFFFFFF/FFFFFFFF")],
)
def test_format_lsn_prints_as_postgres_does(n: int, text: str) -> None:
    assert format_lsn(n) == text
    assert parse_lsn(text) == n


@pytest.mark.parametrize("n", [-1, 2**64])
def test_format_lsn_refuses_what_is_no_position(n: int) -> None:
    with pytest.raises(ValueError, match="0 to 2"):
        format_lsn(n)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_every_position_survives_its_text(n: int) -> None:
    assert parse_lsn(format_lsn(n)) == n


@given(st.text(max_size=40) | st.from_regex(r"[0-9A-Fa-f/ ]{0,20}", fullmatch=True))
def test_parse_lsn_never_raises(text: str) -> None:
    found = parse_lsn(text)
    assert found is None or (0 <= found < 2**64 and parse_lsn(format_lsn(found)) == found)


def test_parse_lsn_is_bounded_on_hostile_input() -> None:
    started = time.perf_counter()
    for text in ("0" * 1_000_000 + "/0", "/" * 1_000_000, "0/" + "F" * 1_000_000):
        assert parse_lsn(text) is None
    assert time.perf_counter() - started < 0.5  # rejected by length, never scanned


# -- the reader against a real pair ----------------------------------------------------------------

pg = pytest.mark.postgres


@pytest.fixture
def pair(postgres_pair: PostgresPairFactory) -> PostgresPair:
    made = postgres_pair()
    made.query("primary", "CREATE TABLE t (x int PRIMARY KEY)")
    made.wait_caught_up(10)
    return made


@pytest.fixture
def readers(pair: PostgresPair) -> Iterator[tuple[PostgresPositionReader, PostgresPositionReader]]:
    primary, standby = PostgresPositionReader(pair.primary_dsn), PostgresPositionReader(pair.standby_dsn)
    try:
        yield primary, standby
    finally:
        primary.close()
        standby.close()


def _write(pair: PostgresPair, value: int) -> int:
    """Insert *value* on the primary; the primary's position right after the commit."""
    with psycopg.connect(pair.primary_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (%s)", (value,))
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    lsn = parse_lsn(row[0])
    assert lsn is not None
    return lsn


def _received(pair: PostgresPair, lsn: int) -> bool:
    return pair.query("standby", f"SELECT pg_last_wal_receive_lsn() >= '{format_lsn(lsn)}'::pg_lsn") == "t"


@pg
def test_positions_on_the_primary_and_the_standby(
    pair: PostgresPair, readers: tuple[PostgresPositionReader, PostgresPositionReader]
) -> None:
    primary, standby = readers
    assert primary.in_recovery() is False
    assert standby.in_recovery() is True
    written = _write(pair, 1)
    at_primary = primary.position()
    assert at_primary is not None
    assert at_primary >= written
    assert standby.wait_for(written, 10)
    at_standby = standby.position()
    assert at_standby is not None
    assert at_standby >= written
    replayed = parse_lsn(pair.query("standby", "SELECT pg_last_wal_replay_lsn()"))
    assert replayed is not None
    assert replayed >= at_standby
    assert primary.replay_lag_ms() == 0
    pair.wait_caught_up(10)
    assert standby.replay_lag_ms() == 0  # replayed everything it received
    # One connection per reader, whatever the number of calls and threads.
    threads = [threading.Thread(target=standby.position) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    mine = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'litefs-route'"
    assert pair.query("standby", mine) == "1"
    assert standby._fetch("SHOW statement_timeout") == ("1s",)


@pg
def test_a_paused_standby_stays_behind_until_resumed(
    pair: PostgresPair, readers: tuple[PostgresPositionReader, PostgresPositionReader]
) -> None:
    _, standby = readers
    pair.pause_replay()
    written = _write(pair, 1)
    wait_for(lambda: _received(pair, written), timeout=10, message="the standby did not receive the WAL")
    behind = standby.position()
    assert behind is not None
    assert behind < written
    lag = standby.replay_lag_ms()
    assert lag is not None
    assert lag > 0
    started = time.monotonic()
    assert standby.wait_for(written, 0.3) is False
    assert time.monotonic() - started >= 0.3
    assert standby.position() == behind

    # A waiting reader does not hold the connection while it sleeps: others read meanwhile.
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(standby.wait_for(written, 30)))
    waiter.start()
    try:
        for _ in range(5):
            asked = time.monotonic()
            assert standby.position() == behind
            assert time.monotonic() - asked < 5 * POLL_INTERVAL + 1.0
        assert outcome == []  # still waiting
    finally:
        pair.resume_replay()
        waiter.join(30)
    assert outcome == [True]
    reached = standby.position()
    assert reached is not None
    assert reached >= written


@pg
def test_standby_only_knows_no_position_on_a_server_that_is_not_a_standby(
    pair: PostgresPair, readers: tuple[PostgresPositionReader, PostgresPositionReader]
) -> None:
    """A replica region's position is a standby's replay: a primary, or a standby once promoted, answers None."""
    primary, standby = readers
    written = _write(pair, 1)
    assert standby.wait_for(written, 10)
    at_standby = standby.position(standby_only=True)
    assert at_standby is not None
    assert at_standby >= written
    assert primary.position(standby_only=True) is None
    pair.promote()
    assert standby.position(standby_only=True) is None
    assert standby.position() is not None  # its own WAL now


@pg
def test_the_reader_reconnects_after_the_standby_restarts(
    pair: PostgresPair, readers: tuple[PostgresPositionReader, PostgresPositionReader], caplog: pytest.LogCaptureFixture
) -> None:
    _, standby = readers
    before = standby.position()
    assert before is not None
    pair.restart("standby")
    with caplog.at_level(logging.DEBUG, logger="litefs_route.postgres"):
        after = standby.position()  # its connection died with the server: a new one, in the same call
    assert after is not None
    assert after >= before
    assert standby.in_recovery() is True
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pg
def test_an_unreachable_server_answers_none_and_is_logged_once(
    pair: PostgresPair, caplog: pytest.LogCaptureFixture
) -> None:
    reader = PostgresPositionReader(pair.standby_dsn, connect_timeout=2)
    try:
        assert reader.position() is not None
        with caplog.at_level(logging.DEBUG, logger="litefs_route.postgres"):
            pair.close()
            assert reader.position() is None
            assert reader.in_recovery() is None
            assert reader.replay_lag_ms() is None
            assert reader.wait_for(1, 0.05) is False
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert warnings[0].name == "litefs_route.postgres"
        assert getattr(warnings[0], "litefs_route_event", None) == "postgres_unreachable"
        assert "Connection refused" in warnings[0].getMessage()
    finally:
        reader.close()
    assert reader.position() is None  # closed: never reopened


@pg
def test_a_server_that_comes_back_is_reconnected_to_after_the_delay(
    pair: PostgresPair, readers: tuple[PostgresPositionReader, PostgresPositionReader], caplog: pytest.LogCaptureFixture
) -> None:
    _, standby = readers
    assert standby.position() is not None
    with caplog.at_level(logging.DEBUG, logger="litefs_route.postgres"):
        pair.stop_node("standby")
        assert standby.position() is None  # its connection died, and a new one is refused
        tried = len(caplog.records)
        assert tried == 1
        assert standby.position() is None
        assert standby.position() is None
        assert len(caplog.records) == tried  # within RECONNECT_DELAY: not asked again
        pair.start_node("standby")
        wait_for(lambda: standby.position() is not None, timeout=10, message="the reader never reconnected")
    events = [getattr(r, "litefs_route_event", None) for r in caplog.records]
    assert events == ["postgres_unreachable", "postgres_reachable"]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    assert standby.in_recovery() is True


@pg
def test_a_closed_reader_answers_none_and_leaves_no_connection(pair: PostgresPair) -> None:
    reader = PostgresPositionReader(pair.standby_dsn)
    assert reader.position() is not None
    mine = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'litefs-route'"
    assert pair.query("standby", mine) == "1"
    reader.close()
    wait_for(lambda: pair.query("standby", mine) == "0", timeout=10, message="the connection stayed open")
    assert reader.position() is None
    assert reader.wait_for(0, 0.01) is False


# -- the password never shows -------------------------------------------------------------------

PASSWORD = "hunter2-Zq9x"


def test_an_unparsable_dsn_is_refused_without_its_password() -> None:
    dsn = f"postgresql://app:{PASSWORD}@[::1/db"
    with pytest.raises(psycopg.ProgrammingError) as raw:  # libpq quotes the whole URL back
        psycopg.conninfo.conninfo_to_dict(dsn)
    assert PASSWORD in str(raw.value)
    with pytest.raises(ValueError, match="invalid Postgres connection string") as refused:
        PostgresPositionReader(dsn)
    assert PASSWORD not in str(refused.value)
    assert "app:********@" in str(refused.value)
    assert refused.value.__cause__ is None
    assert refused.value.__context__ is None


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{PASSWORD}@127.0.0.1:{{port}}/db",
        f"postgresql://app:{PASSWORD.replace('-', '%2D')}@127.0.0.1:{{port}}/db",
        f"postgresql://app@127.0.0.1:{{port}}/db?password={PASSWORD}",
        f"host=127.0.0.1 port={{port}} user=app password={PASSWORD} dbname=db",
        f"host=127.0.0.1 port={{port}} user=app password='{PASSWORD}' dbname=db",
    ],
    ids=["url", "url-percent-encoded", "url-query", "keywords", "keywords-quoted"],
)
def test_the_password_is_never_in_repr_or_logs(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens on it
    try:
        reader = PostgresPositionReader(dsn.format(port=port), connect_timeout=2)
        shown = repr(reader)
        assert PASSWORD not in shown
        assert "hunter2" not in shown
        assert "********" in shown
        with caplog.at_level(logging.DEBUG, logger="litefs_route"):
            assert reader.position() is None
            assert reader.position() is None
        reader.close()
    finally:
        release_port(port)
    assert len(caplog.records) >= 1
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert "hunter2" not in text
        assert record.exc_info is None  # no traceback: psycopg's own message might quote the DSN


def test_without_psycopg_the_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "import litefs_route._postgres as p\n"  # importing the module needs nothing
        "assert p.parse_lsn('0/1') == 1\n"
        "p.PostgresPositionReader('postgresql://x@127.0.0.1/db')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "ImportError: litefs-route's Postgres support needs psycopg 3: pip install 'litefs-route[postgres]'" in (
        result.stderr
    )
    assert "During handling" not in result.stderr


def test_a_long_message_is_cut_after_its_password_is_hidden() -> None:
    reader = PostgresPositionReader(f"postgresql://app:{PASSWORD}@127.0.0.1:1/db")
    try:
        for padding in range(270, 300):  # the cut (300 characters) falls inside the password, or after it
            said = reader._describe(RuntimeError("x" * padding + f" {PASSWORD} then more"))
            assert len(said) <= 300
            assert "hunter" not in said
            assert "Zq9x" not in said
    finally:
        reader.close()
