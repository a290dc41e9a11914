"""The litefs-route command, run as a real process against real mount directories."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from litefs_route._cli import main
from litefs_route._mount import Position
from litefs_route._ops.waits import WaitTimeout, wait_for_primary, wait_for_sync, wait_for_txid
from litefs_route_devcluster.files import NO_PRIMARY_LAG
from tests.support import Mount

ROOT = Path(__file__).resolve().parent.parent
ME = "this-host"


def litefs_route(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "litefs_route", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def status_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    done = litefs_route("status", "--json", "--instance-id", ME, *args, env=env)
    data: dict[str, Any] = json.loads(done.stdout) if done.stdout else {}
    return done.returncode, data


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "litefs_route", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_started(proc: subprocess.Popen[str], expected: str) -> None:
    """The process has read the mount, found the condition false, and is waiting."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert expected in line, line
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


# --- status -----------------------------------------------------------------


def test_status_primary(mount: Mount) -> None:
    mount.set_pos("app.db", 0x2A)
    code, data = status_json("--dir", str(mount.path), "--database", "app.db")
    assert code == 0
    assert data == {
        "role": "primary",
        "is_primary": True,
        "instance": ME,
        "primary": ME,
        "lag_ms": 0,
        "dir": str(mount.path),
        "database": "app.db",
        "txid": 42,
        "detail": "holds the lease: .lag is zero",
        "source": "mount",
    }


def test_status_replica_text_output(mount: Mount) -> None:
    mount.make_replica("primary-host", lag_ms=42)
    mount.set_pos("app.db", 7)
    done = litefs_route(
        "status", "--instance-id", ME, env={"LITEFS_DIR": str(mount.path), "DATABASE_FILENAME": "app.db"}
    )
    assert done.returncode == 0
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert lines["role"] == "replica"
    assert lines["is_primary"] == "false"
    assert lines["primary"] == "primary-host"
    assert lines["lag_ms"] == "42"
    assert lines["txid"] == "7"


def test_status_no_primary(mount: Mount) -> None:
    mount.make_no_primary()
    code, data = status_json("--dir", str(mount.path))
    assert code == 0
    assert (data["role"], data["primary"], data["lag_ms"]) == ("no-primary", None, NO_PRIMARY_LAG)


def test_status_garbled_primary_is_no_primary(mount: Mount) -> None:
    mount.write_primary_raw(b"bad host;\r\n")
    code, data = status_json("--dir", str(mount.path))
    assert code == 0
    assert data["role"] == "no-primary"
    assert data["primary"] is None
    assert "garbled" in data["detail"]


def test_status_standalone_without_a_configured_dir() -> None:
    code, data = status_json()
    assert code == 0
    assert (data["role"], data["is_primary"], data["dir"], data["txid"]) == ("standalone", True, None, None)
    code, data = status_json("--dir", "", env={"LITEFS_DIR": "/nonexistent"})
    assert (code, data["role"]) == (0, "standalone")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_status_missing_dir_is_not_a_mount(tmp_path: Path, how: str) -> None:
    missing = str(tmp_path / "nope")
    args = ("--dir", missing) if how == "flag" else ()
    done = litefs_route("status", *args, env={"LITEFS_DIR": missing} if how == "env" else None)
    assert done.returncode == 3
    assert done.stdout == ""
    assert f"{missing}: not a LiteFS mount" in done.stderr


def test_status_unreadable_mount(mount: Mount) -> None:
    # Reading .primary fails with EISDIR: an I/O error that is not "absent",
    # as EIO/ENOTCONN from a dead FUSE mount (chmod does not stop root).
    (mount.path / ".primary").mkdir()
    done = litefs_route("status", "--dir", str(mount.path))
    assert done.returncode == 3
    assert "not a readable LiteFS mount (mount unreadable: EISDIR)" in done.stderr


def test_status_unreadable_position(mount: Mount) -> None:
    (mount.path / "app.db-pos").mkdir()
    done = litefs_route("status", "--dir", str(mount.path), "--database", "app.db")
    assert done.returncode == 3
    assert "cannot read app.db-pos" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "required"),
        (("wait",), "one of the arguments --primary --synced --txid --schema is required"),
        (("wait", "--primary", "--synced"), "not allowed with argument"),
        (("wait", "--txid", "5"), "wait --txid needs --database"),
        (("wait", "--primary", "--timeout", "-1"), "must be a finite number >= 0"),
        (("exec", "--", "true"), "the following arguments are required: --if-primary"),
        (("exec", "--if-primary"), "exec: no command given"),
        (("exec", "--if-primary", "--"), "exec: no command given"),
    ],
)
def test_misuse_exits_2(args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (argument checks only, no mount): the same main() the script runs.
    code: object
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_misuse_exits_2_as_a_process() -> None:
    done = litefs_route("wait")
    assert done.returncode == 2
    assert "litefs-route wait: error:" in done.stderr


def test_help_documents_the_exit_codes() -> None:
    done = litefs_route("--help")
    assert done.returncode == 0
    for code in ("0 ", "2 ", "3 ", "4 ", "5 ", "126", "127"):
        assert re.search(rf"^  {code}", done.stdout, re.MULTILINE), code


def test_the_console_script_lists_every_command_including_dev() -> None:
    script = Path(sys.executable).parent / "litefs-route"  # pyproject's [project.scripts] entry
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("status", "exec", "wait", "release", "promote", "dev"):
        assert re.search(rf"^    {command} +\S", done.stdout, re.MULTILINE), command


def test_a_misspelled_command_is_offered_dev_among_the_choices() -> None:
    done = litefs_route("stauts")
    assert done.returncode == 2
    assert "invalid choice: 'stauts'" in done.stderr
    assert "'dev'" in done.stderr


def test_no_command_prints_the_help() -> None:
    done = litefs_route()
    assert done.returncode == 2
    assert "positional arguments:" in done.stderr
    assert re.search(r"^    dev +run a local", done.stderr, re.MULTILINE)
    assert "exit codes:" in done.stderr
    assert done.stderr.endswith("litefs-route: a command is required\n")


@pytest.mark.parametrize("command", [("status",), ("status", "--json")])
def test_a_closed_stdout_ends_quietly(command: tuple[str, ...]) -> None:
    # `litefs-route status | head` once the reader has gone: EPIPE, no traceback.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "litefs_route", *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "LITEFS_DIR"},
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 1


# --- exec --if-primary -------------------------------------------------------

SCRIPT = "import sys; print('ran', *sys.argv[1:]); sys.exit(7)"


def test_exec_runs_on_the_primary_and_passes_the_exit_code(mount: Mount) -> None:
    done = litefs_route(
        "exec", "--if-primary", "--dir", str(mount.path), "--instance-id", ME, "--", sys.executable, "-c", SCRIPT, "x"
    )
    assert (done.returncode, done.stdout) == (7, "ran x\n")
    assert "running:" in done.stderr


def test_exec_skips_on_a_replica(mount: Mount, tmp_path: Path) -> None:
    mount.make_replica("primary-host")
    marker = tmp_path / "ran"
    done = litefs_route(
        "exec", "--if-primary", "--dir", str(mount.path), "--instance-id", ME, "--", "touch", str(marker)
    )
    assert done.returncode == 0
    assert not marker.exists()
    assert "skipped touch" in done.stderr
    assert "this node is a replica (primary: primary-host" in done.stderr


def test_exec_runs_standalone() -> None:
    done = litefs_route("exec", "--if-primary", "--", sys.executable, "-c", SCRIPT)
    assert (done.returncode, done.stdout) == (7, "ran\n")
    assert "standalone counts as the primary" in done.stderr


def test_exec_refuses_without_a_known_primary(mount: Mount, tmp_path: Path) -> None:
    mount.make_no_primary()
    marker = tmp_path / "ran"
    done = litefs_route("exec", "--if-primary", "--wait", "0.1", "--dir", str(mount.path), "--", "touch", str(marker))
    assert done.returncode == 4
    assert not marker.exists()
    assert "no primary is known" in done.stderr


def test_exec_waits_for_a_primary_then_runs(mount: Mount) -> None:
    mount.make_no_primary()
    proc = start(
        "exec", "--if-primary", "--wait", "30", "--dir", str(mount.path), "--instance-id", ME,
        "--", sys.executable, "-c", SCRIPT,
    )  # fmt: skip
    wait_started(proc, "no primary known yet; waiting up to 30 s")
    mount.make_primary()
    code, out, _ = finish(proc)
    assert (code, out) == (7, "ran\n")


def test_exec_command_not_found(mount: Mount) -> None:
    done = litefs_route("exec", "--if-primary", "--dir", str(mount.path), "--", "no-such-command-litefs-route")
    assert done.returncode == 127
    assert "no-such-command-litefs-route: command not found" in done.stderr


def test_exec_missing_mount(tmp_path: Path) -> None:
    done = litefs_route("exec", "--if-primary", "--dir", str(tmp_path / "nope"), "--", "true")
    assert done.returncode == 3


def docs_recipe(name: str) -> str:
    text = (ROOT / "docs" / "migrations.md").read_text()
    match = re.search(rf"<!-- litefs-route:test {re.escape(name)} -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match is not None, f"recipe {name} not found in docs/migrations.md"
    return match[1]


def test_docs_migration_recipe_runs_only_on_the_primary(mount: Mount, tmp_path: Path) -> None:
    script = tmp_path / "migrate.py"
    script.write_text(docs_recipe("migrate.py"))
    db_path = mount.path / "app.db"
    command = ("exec", "--if-primary", "--dir", str(mount.path), "--instance-id", ME, "--")
    migrate = (*command, sys.executable, str(script), str(db_path))

    mount.make_replica("primary-host")
    done = litefs_route(*migrate)
    assert done.returncode == 0
    assert not db_path.exists()

    mount.make_primary()
    first = litefs_route(*migrate)
    again = litefs_route(*migrate)
    assert (first.returncode, first.stdout) == (0, "schema version 2: 2 step(s) applied\n")
    assert (again.returncode, again.stdout) == (0, "schema version 2: 0 step(s) applied\n")
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
        assert [row[1] for row in db.execute("PRAGMA table_info(notes)")] == ["id", "body", "created_at"]
    db.close()


# --- wait --------------------------------------------------------------------


def test_wait_primary_returns_when_this_node_becomes_primary(mount: Mount) -> None:
    mount.make_replica("primary-host")
    proc = start("wait", "--primary", "--timeout", "30", "--dir", str(mount.path), "--instance-id", ME)
    wait_started(proc, "waiting up to 30 s to be the primary; this node is a replica")
    mount.make_primary()
    code, _, err = finish(proc)
    assert code == 0
    assert "this node is primary" in err


def test_wait_synced_returns_when_the_lag_drops(mount: Mount) -> None:
    mount.make_replica("primary-host", lag_ms=5000)
    proc = start("wait", "--synced", "--max-lag", "100", "--timeout", "30", "--dir", str(mount.path))
    wait_started(proc, "for lag <= 100 ms")
    mount.set_lag(100)
    code, _, err = finish(proc)
    assert code == 0
    assert "synced" in err


def test_wait_txid_returns_when_the_position_reaches_it(mount: Mount) -> None:
    mount.make_replica("primary-host")
    mount.set_pos("app.db", 5)
    proc = start("wait", "--txid", "7", "--database", "app.db", "--timeout", "30", "--dir", str(mount.path))
    wait_started(proc, "to reach TXID 7 (now: 5)")
    mount.set_pos("app.db", 6)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)
    mount.set_pos("app.db", 7)
    code, _, err = finish(proc)
    assert code == 0
    assert "app.db is at TXID 7" in err


@pytest.mark.parametrize(
    "condition",
    [("--primary",), ("--synced", "--max-lag", "10"), ("--txid", "0x10", "--database", "app.db")],
)
def test_wait_times_out_with_exit_5(mount: Mount, condition: tuple[str, ...]) -> None:
    mount.make_replica("primary-host", lag_ms=50)
    mount.set_pos("app.db", 15)
    done = litefs_route("wait", *condition, "--timeout", "0.1", "--dir", str(mount.path), "--instance-id", ME)
    assert done.returncode == 5
    assert "wait: timed out after 0.1 s" in done.stderr


def test_wait_standalone_holds_at_once() -> None:
    for condition in (("--primary",), ("--synced",), ("--txid", "9", "--database", "app.db")):
        done = litefs_route("wait", *condition, "--timeout", "0")
        assert done.returncode == 0, done.stderr


# --- the helpers behind the commands ------------------------------------------------


def test_wait_helpers_return_the_reading_and_time_out_with_the_last_one(mount: Mount) -> None:
    mount.make_replica("primary-host", lag_ms=30)
    mount.set_pos("app.db", 3)
    assert wait_for_primary(str(mount.path), 0, instance_id=ME).primary_id == "primary-host"
    assert wait_for_sync(str(mount.path), 0, max_lag_ms=30, instance_id=ME).lag_ms == 30
    assert wait_for_txid(str(mount.path), "app.db", 3, 0) == Position(3, 0x1234ABCD)

    seen: list[object] = []
    with pytest.raises(WaitTimeout) as info:
        wait_for_primary(str(mount.path), 0, this_node=True, instance_id=ME, on_wait=seen.append)
    assert seen == [info.value.last]
    assert isinstance(info.value, TimeoutError)
    with pytest.raises(WaitTimeout) as info:
        wait_for_txid(str(mount.path), "other.db", 1, 0)
    assert info.value.last is None


# --- release-aware steps, standalone (the cluster cases are in test_releases.py) --------------


def test_an_after_release_step_that_fails_runs_again_and_one_that_never_finished_exits_6(mount: Mount) -> None:
    mount.make_primary()
    db = mount.path / "app.db"
    node = ("--dir", str(mount.path), "--instance-id", ME, "--database", "app.db", "--api-url", "off")
    assert litefs_route("release", "register", *node, "--release", "v1").returncode == 0
    step = ("exec", "--if-primary", "--after-release", "v1", *node, "--")

    missing = litefs_route(*step, "no-such-command-litefs-route")
    assert (missing.returncode, "not recorded" in missing.stderr) == (127, True)
    failed = litefs_route(*step, sys.executable, "-c", "raise SystemExit(3)")
    assert (failed.returncode, "not recorded, it runs again next time" in failed.stderr) == (3, True)
    ran = litefs_route(*step, sys.executable, "-c", "print('ran')")
    assert (ran.returncode, ran.stdout) == (0, "ran\n")

    with sqlite3.connect(db) as conn:  # a run on an instance that died mid-step, long ago
        conn.execute(
            "INSERT INTO litefs_route_instances_steps (release, step, instance, started_at) "
            "VALUES ('v1', 's', 'dead', 0)"
        )
    conn.close()
    stuck = litefs_route(*step[:4], "--step", "s", *step[4:], sys.executable, "-c", "print('ran again')")
    assert stuck.returncode == 6
    assert "was claimed by dead at 1970-01-01 00:00:00 UTC and not finished, and dead is gone" in stuck.stderr
    assert stuck.stdout == ""

    bad_query = litefs_route("wait", "--schema", "1", "--query", "SELEC 1", *node)
    assert (bad_query.returncode, "the schema query 'SELEC 1' failed" in bad_query.stderr) == (2, True)


def test_an_after_release_step_this_instance_left_unfinished_before_a_restart_exits_6_at_once(mount: Mount) -> None:
    """Same FLY_MACHINE_ID after a restart: its own old claim is no live run to wait for (issue 24, 6)."""
    mount.make_primary()
    db = mount.path / "app.db"
    node = ("--dir", str(mount.path), "--instance-id", ME, "--database", "app.db", "--api-url", "off")
    assert litefs_route("release", "register", *node, "--release", "v1").returncode == 0
    assert litefs_route("release", "status", *node).returncode == 0  # the tables exist
    ran = litefs_route("exec", "--if-primary", "--after-release", "v1", *node, "--", sys.executable, "-c", "")
    assert ran.returncode == 0
    with sqlite3.connect(db) as conn:  # this instance claimed step s, then its Machine died mid-step
        conn.execute(
            "INSERT INTO litefs_route_instances_steps (release, step, instance, started_at) VALUES ('v1', 's', ?, 0)",
            (ME,),
        )
    conn.close()
    # A timeout no test waits out: before the fix it waited all of it, then exited 5.
    step = ("exec", "--if-primary", "--after-release", "v1", "--step", "s", "--timeout", "3600", *node, "--")
    stuck = litefs_route(*step, sys.executable, "-c", "print('ran again')")
    assert stuck.returncode == 6, stuck.stderr
    assert f"claimed by {ME} at 1970-01-01 00:00:00 UTC and not finished, and this instance restarted" in stuck.stderr
    assert stuck.stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        ("release", "status"),
        ("release", "register", "--release", "v1"),
        ("release", "wait", "--all-on", "v1", "--timeout", "30"),
        ("wait", "--schema", "1", "--timeout", "30"),
        ("exec", "--if-primary", "--after-release", "v1", "--timeout", "30", "--", sys.executable, "-c", ""),
    ],
    ids=["release-status", "release-register", "release-wait", "wait-schema", "exec-after-release"],
)
def test_a_corrupt_database_is_a_clear_message_and_exit_8(mount: Mount, command: tuple[str, ...]) -> None:
    """Not a traceback and exit 1 (issue 24, 11): exit 8, documented, saying what is wrong."""
    mount.make_primary()
    (mount.path / "app.db").write_bytes(b"this is not a SQLite database " * 200)
    node = ("--dir", str(mount.path), "--instance-id", ME, "--database", "app.db", "--api-url", "off")
    split = command.index("--") if "--" in command else len(command)
    head, tail = command[:split], command[split:]
    done = litefs_route(*head, *node, *tail)
    assert done.returncode == 8, done.stderr
    assert "the database cannot be read (file is not a database)" in done.stderr
    assert "Traceback" not in done.stderr
