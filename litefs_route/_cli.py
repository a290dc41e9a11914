"""The ``litefs-route`` command: the node's LiteFS role for scripts and deploys.

::

    litefs-route status [--json]                      # role, primary, lag, TXID, source
    litefs-route exec --if-primary [--wait S] -- CMD  # run CMD only on the primary
    litefs-route exec --if-primary --after-release R -- CMD   # ... once every instance runs R, once
    litefs-route wait --primary | --synced [--max-lag MS] | --txid N | --schema N  [--timeout S]
    litefs-route release register | heartbeat | status [--json] | wait --all-on R
    litefs-route promote [--timeout S]                # move the lease here
    litefs-route run --while-primary [--grace S] -- CMD   # CMD only while primary (docs/background-work.md)

Also runnable as ``python -m litefs_route``. Every command reads the mount in
``--dir`` (default ``$LITEFS_DIR``). With no directory configured at all the
node is *standalone* (local development) and counts as the primary. A
directory that is configured but missing or unreadable is an error here
(exit 3) (the middleware serves it as "no primary known"): a deploy script
pointed at a mount that is not there must stop. ``wait --primary`` and
``wait --txid`` follow LiteFS's event stream (``--api-url``, default
``$LITEFS_API_URL`` or ``http://127.0.0.1:20202``; ``off`` to poll) where it
is up, and poll the mount where it is not.

Exit codes (shared by all commands; see ``EXIT_CODES_HELP``):

- 0: done. ``status``: the state was read, whatever the role. ``wait``: the
  condition holds. ``exec``: the command's own exit code when it ran, 0 when
  it was skipped on a replica.
- 2: usage error.
- 3: the mount is missing or unreadable ("not a LiteFS mount").
- 4: ``exec --if-primary``: no primary is known (after ``--wait``), so
  nobody can tell whether this node should run the command.
- 5: ``wait``, ``release wait``, ``exec --after-release``, ``promote``: timed out.
- 6: ``exec --after-release``: a run of the step claimed it and never
  finished (check, then delete its row from ``<table>_steps``).
- 7: ``release register`` / ``heartbeat``: the record could not be written
  (no primary, the HALT lock refused).
- 126 / 127: ``exec``: the command could not be run / was not found.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from ._mount import NodeState, Position, Role, default_instance_id, read_node_state, read_position
from ._ops import HaltLockError, WaitTimeout, read_state_from_stream, wait_for_primary, wait_for_sync, wait_for_txid
from ._releases import (
    DEFAULT_TABLE,
    GONE_AFTER,
    RENEW_EVERY,
    Heartbeat,
    StepClaimed,
    default_release,
    instances,
    promote,
    run_after_release,
    wait_for_release,
    wait_for_schema,
)
from ._subscriber import DEFAULT_API_URL, OFF

__all__ = [
    "EXIT_DATABASE",
    "EXIT_MOUNT",
    "EXIT_NOT_WRITTEN",
    "EXIT_NO_PRIMARY",
    "EXIT_OK",
    "EXIT_STEP_CLAIMED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_USAGE = 2  # argparse's own
EXIT_MOUNT = 3
EXIT_NO_PRIMARY = 4
EXIT_TIMEOUT = 5
EXIT_STEP_CLAIMED = 6
EXIT_NOT_WRITTEN = 7
EXIT_DATABASE = 8
EXIT_CANNOT_RUN = 126  # as sh does
EXIT_NOT_FOUND = 127

EXIT_CODES_HELP = """\
exit codes:
  0    status: state read (any role); wait: condition holds;
       exec: the command's own code, or 0 when skipped on a replica
  2    usage error
  3    --dir / $LITEFS_DIR is missing or unreadable (not a LiteFS mount)
  4    exec --if-primary: no primary known (after --wait)
  5    wait, release wait, exec --after-release, promote: timed out
  6    exec --after-release: the step was claimed by a run that never finished
  7    release register/heartbeat: the record could not be written
  8    release, wait --schema, exec --after-release: the database is not a
       SQLite database, or is corrupt
  126  exec: command not executable
  127  exec: command not found

With no --dir and no $LITEFS_DIR the node is standalone (local development)
and counts as the primary: exec runs the command, wait --primary succeeds.
"""


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _say(message: str) -> None:
    print(f"litefs-route: {message}", file=sys.stderr, flush=True)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _api_url(value: str) -> str | None:
    if value == OFF:
        return None
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not http://host:port or 'off': {value!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        default=os.environ.get("LITEFS_DIR"),
        help="the LiteFS mount (default: $LITEFS_DIR; empty or unset: standalone)",
    )
    common.add_argument(
        "--instance-id",
        default=None,
        help="this instance's id (default: $FLY_MACHINE_ID, else the host name)",
    )
    common.add_argument(
        "--database",
        default=os.environ.get("DATABASE_FILENAME", "").split(",")[0].strip() or None,
        help="database file name in the mount, for its TXID (default: $DATABASE_FILENAME, the first if several)",
    )
    common.add_argument(
        "--api-url",
        default=os.environ.get("LITEFS_API_URL") or DEFAULT_API_URL,
        type=_api_url,
        help="LiteFS's HTTP API, whose event stream wakes waits instead of polling the mount "
        f"(default: $LITEFS_API_URL, else {DEFAULT_API_URL}; 'off': always poll)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log what the library does")

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="litefs-route",
        description="This node's LiteFS role, for scripts, deploys and migrations.",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{status,exec,wait,release,promote,run,dev}")

    status = sub.add_parser(
        "status",
        parents=[common],
        help="print the role, the primary, lag and TXID",
        description="Print this node's role (primary, replica, no-primary, standalone), this instance, "
        "the primary, the lag in ms and, with a database, its TXID.",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")

    run = sub.add_parser(
        "exec",
        parents=[common],
        help="run a command only on the primary",
        description="Run CMD only if this node is the primary (or standalone); on a replica print why it "
        "was skipped and exit 0, so a LiteFS `exec` entry does not bring the mount down.",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    run.add_argument("--if-primary", action="store_true", required=True, help="run CMD only on the primary")
    run.add_argument(
        "--wait",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for a primary to be known (default: 0, decide now)",
    )
    run.add_argument(
        "--after-release",
        metavar="RELEASE",
        help="run CMD once every live instance reports RELEASE, and once per release for the cluster "
        "(recorded in the registry: see `release`)",
    )
    run.add_argument(
        "--step", default="after-release", help="with --after-release: the step's name (default: %(default)s)"
    )
    run.add_argument(
        "--timeout", type=_seconds, default=600.0, metavar="SECONDS", help="with --after-release (default: 600)"
    )
    _registry_options(run)
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command and its arguments")

    wait = sub.add_parser(
        "wait",
        parents=[common],
        help="block until this node is primary, is synced, or has a TXID",
        description="Block until the condition holds, then exit 0; exit 5 on timeout.",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    what = wait.add_mutually_exclusive_group(required=True)
    what.add_argument("--primary", action="store_true", help="until this node is the primary")
    what.add_argument("--synced", action="store_true", help="until this node's lag is at most --max-lag")
    what.add_argument("--txid", type=_count, metavar="N", help="until --database's TXID is at least N")
    what.add_argument(
        "--schema", type=_count, metavar="N", help="until --database's schema (PRAGMA user_version, or --query) is >= N"
    )
    wait.add_argument("--max-lag", type=_count, default=1000, metavar="MS", help="with --synced (default: 1000 ms)")
    wait.add_argument("--query", default="PRAGMA user_version", help="with --schema: SQL whose first value is it")
    wait.add_argument("--timeout", type=_seconds, default=60.0, metavar="SECONDS", help="default: 60")

    release = sub.add_parser(
        "release",
        help="which release each instance runs (a registry in the database)",
        description="Each instance records its release in the replicated database (on a replica through "
        "LiteFS's HALT lock); after-release steps wait for all of them (exec --after-release).",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    actions = release.add_subparsers(dest="action", required=True, metavar="{register,heartbeat,status,wait}")
    for name, summary in (
        ("register", "record this instance's release once (at start)"),
        ("heartbeat", f"record it, then renew it every --every seconds until stopped (default {RENEW_EVERY:g})"),
    ):
        action = actions.add_parser(name, parents=[common], help=summary, description=summary, epilog=EXIT_CODES_HELP)
        action.add_argument("--release", default=default_release(), help="default: $FLY_IMAGE_REF")
        action.add_argument("--schema", type=_count, metavar="N", help="the schema version this release's code needs")
        _registry_options(action)
        if name == "heartbeat":
            action.add_argument("--every", type=_seconds, default=RENEW_EVERY, metavar="SECONDS")
    shown = actions.add_parser(
        "status", parents=[common], help="every live instance, its release, schema, last seen", epilog=EXIT_CODES_HELP
    )
    shown.add_argument("--json", action="store_true", help="a JSON list on stdout")
    shown.add_argument("--all", action="store_true", help="gone instances too")
    _registry_options(shown)
    waits = actions.add_parser(
        "wait", parents=[common], help="block until every live instance runs --all-on", epilog=EXIT_CODES_HELP
    )
    waits.add_argument("--all-on", required=True, metavar="RELEASE")
    waits.add_argument("--timeout", type=_seconds, default=600.0, metavar="SECONDS", help="default: 600")
    _registry_options(waits)

    promote = sub.add_parser(
        "promote",
        parents=[common],
        help="move the lease to this candidate and wait until it holds it",
        description="Ask LiteFS (POST /promote, as `litefs run -promote`) to hand the lease to this node, "
        "and wait until this node is the primary.",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    promote.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS", help="default: 30")

    supervise = sub.add_parser(
        "run",
        parents=[common],
        help="run a command only while this node is the primary (workers, schedulers)",
        description="Start CMD when this node is or becomes the primary, stop it (SIGTERM, --grace, SIGKILL) "
        "when it stops being primary; see docs/background-work.md.",
        formatter_class=formatter,
    )
    supervise.add_argument("--while-primary", action="store_true", required=True, help="run CMD only while primary")
    supervise.add_argument("--grace", type=_seconds, default=10.0, metavar="SECONDS", help="SIGTERM to SIGKILL (10)")
    supervise.add_argument(
        "--start-delay", type=_seconds, default=None, metavar="SECONDS", help="primary this long first (grace + 1)"
    )
    supervise.add_argument("--restart", action="store_true", help="start CMD again when it ends by itself")
    supervise.add_argument("--lock", default=None, metavar="PATH", help="the lock a running copy holds (per command)")
    supervise.add_argument("--interval", type=_seconds, default=0.5, metavar="SECONDS", help="mount polling (0.5)")
    supervise.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command and its arguments")
    return parser


def _registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", default=DEFAULT_TABLE, help="the registry's table (default: %(default)s)")
    parser.add_argument(
        "--gone-after",
        type=_seconds,
        default=GONE_AFTER,
        metavar="SECONDS",
        help="an instance not seen for this long counts as gone (default: %(default)g)",
    )


def _mount_dir(args: argparse.Namespace) -> str | None:
    """The configured mount, or None (standalone); exit 3 if it is not a directory."""
    litefs_dir: str | None = args.dir or None
    if litefs_dir is not None and not os.path.isdir(litefs_dir):
        raise _Fail(EXIT_MOUNT, f"{litefs_dir}: not a LiteFS mount (no such directory)")
    return litefs_dir


def _read_state(litefs_dir: str | None, instance_id: str) -> NodeState:
    state = read_node_state(litefs_dir, instance_id)
    if state.mount_error is not None:
        raise _Fail(EXIT_MOUNT, f"{litefs_dir}: not a readable LiteFS mount ({state.detail})")
    return state


def _describe(state: NodeState) -> str:
    if state.role is Role.REPLICA:
        return f"this node is a replica (primary: {state.primary_id}; {state.detail})"
    if state.role is Role.NO_PRIMARY:
        return f"no primary is known ({state.detail})"
    return f"this node is {state.role.value} ({state.detail})"


def _ms(lag_ms: int | None) -> str:
    return "unknown" if lag_ms is None else f"{lag_ms} ms"


def _status(args: argparse.Namespace, instance_id: str) -> int:
    litefs_dir = _mount_dir(args)
    state = _read_state(litefs_dir, instance_id)
    source = "mount"
    if litefs_dir is not None and args.api_url:
        on_stream = read_state_from_stream(args.api_url, instance_id)
        if on_stream is not None and (on_stream.role, on_stream.primary_id) == (state.role, state.primary_id):
            source = "events"
        elif on_stream is not None:
            _say(
                f"LiteFS's API at {args.api_url} says {on_stream.role} (primary {on_stream.primary_id or '-'}), "
                f"the mount says {state.role}: showing the mount's (is --api-url this mount's LiteFS?)"
            )
    position: Position | None = None
    if args.database and litefs_dir is not None:
        try:
            position = read_position(litefs_dir, args.database)
        except OSError as exc:
            raise _Fail(EXIT_MOUNT, f"{litefs_dir}: cannot read {args.database}-pos ({exc.strerror})") from exc
    report: dict[str, object] = {
        "role": state.role.value,
        "is_primary": state.is_primary,
        "instance": state.instance_id,
        "primary": state.primary_id,
        "lag_ms": state.lag_ms,
        "dir": litefs_dir,
        "database": args.database,
        "txid": None if position is None else position.txid,
        "detail": state.detail,
        "source": source,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {'-' if value is None else str(value).lower() if isinstance(value, bool) else value}")
    return EXIT_OK


def _exec(args: argparse.Namespace, instance_id: str) -> int:
    cmd: list[str] = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise _Fail(EXIT_USAGE, "exec: no command given (usage: litefs-route exec --if-primary -- CMD ...)")
    shown = shlex.join(cmd)
    litefs_dir = _mount_dir(args)
    state = _read_state(litefs_dir, instance_id)
    if state.role is Role.NO_PRIMARY and args.wait > 0:
        _say(f"no primary known yet; waiting up to {args.wait:g} s before deciding on: {shown}")
        try:
            state = wait_for_primary(litefs_dir, args.wait, instance_id=instance_id, api_url=args.api_url)
        except WaitTimeout as exc:
            if isinstance(exc.last, NodeState):
                state = exc.last
    if state.role is Role.NO_PRIMARY:
        raise _Fail(EXIT_NO_PRIMARY, f"not running {shown}: {_describe(state)}")
    if not state.is_primary:
        _say(f"skipped {shown}: {_describe(state)}")
        return EXIT_OK
    if args.after_release:
        return _after_release(args, litefs_dir, instance_id, cmd)
    if state.role is Role.STANDALONE:
        _say(f"no LiteFS mount, standalone counts as the primary; running: {shown}")
    else:
        _say(f"{_describe(state)}; running: {shown}")
    # exec, not a child: the command gets LiteFS's signals and its exit code is ours.
    try:
        os.execvp(cmd[0], cmd)  # noqa: S606 - the user's own command line, argv as given
    except FileNotFoundError:
        raise _Fail(EXIT_NOT_FOUND, f"{cmd[0]}: command not found") from None
    except OSError as exc:
        raise _Fail(EXIT_CANNOT_RUN, f"{cmd[0]}: cannot run ({exc.strerror})") from None


def _run(args: argparse.Namespace, instance_id: str) -> int:
    from ._supervisor import main as supervise

    cmd = list(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
    if not cmd:
        raise _Fail(EXIT_USAGE, "run: no command given (usage: litefs-route run --while-primary -- CMD ...)")
    # A mount not there yet (LiteFS still starting) is "not primary": CMD waits for it.
    return supervise(
        cmd,
        litefs_dir=args.dir or None,
        instance_id=instance_id,
        api_url=args.api_url or OFF,
        grace=args.grace,
        start_delay=args.start_delay,
        restart=args.restart,
        interval=args.interval,
        lock=args.lock,
    )


def _wait(args: argparse.Namespace, instance_id: str) -> int:
    if args.txid is not None and not args.database:
        raise _Fail(EXIT_USAGE, "wait --txid needs --database (or $DATABASE_FILENAME)")
    litefs_dir = _mount_dir(args)
    state = _read_state(litefs_dir, instance_id)
    timeout: float = args.timeout
    try:
        if args.primary:
            state = wait_for_primary(
                litefs_dir,
                timeout,
                this_node=True,
                instance_id=instance_id,
                api_url=args.api_url,
                on_wait=lambda s: _say(f"waiting up to {timeout:g} s to be the primary; {_describe(s)}"),
            )
            _say(_describe(state))
        elif args.synced:
            state = wait_for_sync(
                litefs_dir,
                timeout,
                max_lag_ms=args.max_lag,
                instance_id=instance_id,
                on_wait=lambda s: _say(
                    f"waiting up to {timeout:g} s for lag <= {args.max_lag} ms; {_describe(s)}, lag {_ms(s.lag_ms)}"
                ),
            )
            _say(f"synced: {_describe(state)}, lag {_ms(state.lag_ms)}")
        elif args.schema is not None:
            try:
                version = wait_for_schema(
                    _database(args, litefs_dir),
                    args.schema,
                    timeout,
                    query=args.query,
                    on_wait=lambda v: _say(f"waiting up to {timeout:g} s for schema {args.schema} (now: {v})"),
                )
            except ValueError as exc:
                raise _Fail(EXIT_USAGE, f"wait --schema: {exc}") from None
            _say(f"the schema is at {version}")
        elif litefs_dir is None:
            _say(f"no LiteFS mount (standalone): no TXID to wait for on {args.database}")
        else:
            position = wait_for_txid(
                litefs_dir,
                args.database,
                args.txid,
                timeout,
                api_url=args.api_url,
                on_wait=lambda p: _say(
                    f"waiting up to {timeout:g} s for {args.database} to reach TXID {args.txid} "
                    f"(now: {'unknown' if p is None else p.txid})"
                ),
            )
            _say(f"{args.database} is at TXID {position.txid}")
    except WaitTimeout as exc:
        raise _Fail(EXIT_TIMEOUT, f"wait: {exc}") from None
    return EXIT_OK


def _database(args: argparse.Namespace, litefs_dir: str | None) -> str:
    """The database's path: --database in the mount (or, standalone, the current directory)."""
    if not args.database:
        raise _Fail(EXIT_USAGE, f"{args.command} needs --database (or $DATABASE_FILENAME)")
    return os.path.join(litefs_dir or ".", args.database)


def _after_release(args: argparse.Namespace, litefs_dir: str | None, instance_id: str, cmd: list[str]) -> int:
    release, step, shown = args.after_release, args.step, shlex.join(cmd)
    try:
        code = run_after_release(
            _database(args, litefs_dir),
            release,
            cmd,
            args.timeout,
            step=step,
            instance_id=instance_id,
            litefs_dir=litefs_dir,
            table=args.table,
            gone_after=args.gone_after,
            on_wait=lambda behind: _say(
                f"waiting to run {shown} until every instance runs {release}; not yet: "
                + (", ".join(f"{r.instance} ({r.release})" for r in behind) or "no instance has registered")
            ),
        )
    except StepClaimed as exc:
        raise _Fail(EXIT_STEP_CLAIMED, f"not running {shown}: {exc}") from None
    except WaitTimeout as exc:
        raise _Fail(EXIT_TIMEOUT, f"not running {shown}: {exc}") from None
    except RuntimeError as exc:
        raise _Fail(EXIT_NO_PRIMARY, f"not running {shown}: {exc}") from None
    except sqlite3.OperationalError as exc:
        raise _Fail(EXIT_MOUNT, f"not running {shown}: the registry cannot be read or written ({exc})") from None
    except sqlite3.DatabaseError as exc:
        raise _Fail(EXIT_DATABASE, f"not running {shown}: {_unreadable(exc)}") from None
    except sqlite3.Error as exc:
        raise _Fail(EXIT_MOUNT, f"not running {shown}: the registry cannot be read or written ({exc})") from None
    if code is None:
        _say(f"skipped {shown}: step {step!r} of release {release} already ran")
        return EXIT_OK
    _say(f"{shown} exited {code}" + ("; recorded as done" if code == 0 else "; not recorded, it runs again next time"))
    return code


def _release(args: argparse.Namespace, instance_id: str) -> int:
    litefs_dir = _mount_dir(args)
    db_path = _database(args, litefs_dir)
    try:
        if args.action in ("register", "heartbeat"):
            if not args.release:
                raise _Fail(EXIT_USAGE, f"release {args.action} needs --release (or $FLY_IMAGE_REF)")
            every = getattr(args, "every", RENEW_EVERY)
            beat = Heartbeat(
                db_path,
                release=args.release,
                schema=args.schema,
                instance_id=instance_id,
                table=args.table,
                every=every,
            )
            record = beat.renew(starting=True)
            _say(f"{record.instance} registered on release {record.release}")
            if args.action == "heartbeat":
                beat.run(on_error=lambda exc: _say(f"renewing failed, trying again in {every:g} s: {exc}"))
            return EXIT_OK
        if args.action == "status":
            records = instances(db_path, table=args.table, gone_after=None if args.all else args.gone_after)
            now = time.time()
            if args.json:
                print(json.dumps([dataclasses.asdict(r) | {"seen_ago": round(now - r.seen_at, 1)} for r in records]))
            else:
                for r in records:
                    schema = "-" if r.schema is None else r.schema
                    print(f"{r.instance}  release {r.release}  schema {schema}  seen {now - r.seen_at:.0f} s ago")
            return EXIT_OK
        live = wait_for_release(
            db_path,
            args.all_on,
            args.timeout,
            table=args.table,
            gone_after=args.gone_after,
            on_wait=lambda behind: _say(
                f"waiting for every instance to run {args.all_on}; not yet: "
                + (", ".join(f"{r.instance} ({r.release})" for r in behind) or "no instance has registered")
            ),
        )
        _say(f"every live instance runs {args.all_on}: {', '.join(r.instance for r in live)}")
        return EXIT_OK
    except (HaltLockError, sqlite3.OperationalError, ValueError) as exc:
        raise _Fail(EXIT_NOT_WRITTEN if args.action in ("register", "heartbeat") else EXIT_MOUNT, str(exc)) from None
    except sqlite3.DatabaseError as exc:
        raise _Fail(EXIT_DATABASE, f"release {args.action}: {_unreadable(exc)}") from None
    except WaitTimeout as exc:
        raise _Fail(EXIT_TIMEOUT, f"release wait: {exc}") from None


def _promote(args: argparse.Namespace, instance_id: str) -> int:
    litefs_dir = _mount_dir(args)
    if litefs_dir is None:
        _say("no LiteFS mount (standalone): already the primary")
        return EXIT_OK
    if not args.api_url:
        raise _Fail(EXIT_USAGE, "promote needs LiteFS's API (--api-url, not 'off')")
    try:
        promote(litefs_dir, args.api_url, args.timeout, instance_id=instance_id)
    except WaitTimeout as exc:
        raise _Fail(EXIT_TIMEOUT, f"promote: {exc}") from None
    _say(f"{instance_id} is the primary")
    return EXIT_OK


def _unreadable(exc: sqlite3.DatabaseError) -> str:
    return f"the database cannot be read ({exc}): it is not a SQLite database, or it is corrupt"


#: Entry points that add a sub-command: ``litefs-route-devcluster`` adds ``dev``.
COMMAND_ENTRY_POINTS = "litefs_route.commands"


def _run_plugin(name: str, argv: list[str]) -> int:
    """Run the sub-command another distribution provides; it is called as ``main(argv, prog=...)``."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=COMMAND_ENTRY_POINTS, name=name):
        command: Callable[..., int] = entry.load()
        return command(argv, prog=f"litefs-route {name}")
    _say(f"{name}: the local cluster is its own distribution: pip install litefs-route-devcluster")
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see :data:`EXIT_CODES_HELP`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "dev":  # the local cluster: its own distribution and options, see docs/devcluster.md
        return _run_plugin("dev", argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="litefs-route: %(levelname)s %(message)s"
    )
    instance_id: str = args.instance_id or default_instance_id()
    commands = {"status": _status, "exec": _exec, "wait": _wait, "release": _release, "promote": _promote, "run": _run}
    try:
        return commands[args.command](args, instance_id)
    except _Fail as fail:
        _say(str(fail))
        return fail.code
    except sqlite3.DatabaseError as exc:  # e.g. wait --schema on a file that is no SQLite database
        _say(f"{args.command}: {_unreadable(exc)}")
        return EXIT_DATABASE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
