"""The ``litefs-route`` command: the node's LiteFS role for scripts and deploys.

::

    litefs-route status [--json]                      # role, primary, lag, TXID, source
    litefs-route exec --if-primary [--wait S] -- CMD  # run CMD only on the primary
    litefs-route wait --primary | --synced [--max-lag MS] | --txid N  [--timeout S]

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
- 5: ``wait``: timed out.
- 126 / 127: ``exec``: the command could not be run / was not found.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from .mount import NodeState, Position, Role, default_instance_id, read_node_state, read_position
from .ops import WaitTimeout, read_state_from_stream, wait_for_primary, wait_for_sync, wait_for_txid
from .subscriber import DEFAULT_API_URL, OFF

__all__ = ["EXIT_MOUNT", "EXIT_NO_PRIMARY", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_USAGE = 2  # argparse's own
EXIT_MOUNT = 3
EXIT_NO_PRIMARY = 4
EXIT_TIMEOUT = 5
EXIT_CANNOT_RUN = 126  # as sh does
EXIT_NOT_FOUND = 127

EXIT_CODES_HELP = """\
exit codes:
  0    status: state read (any role); wait: condition holds;
       exec: the command's own code, or 0 when skipped on a replica
  2    usage error
  3    --dir / $LITEFS_DIR is missing or unreadable (not a LiteFS mount)
  4    exec --if-primary: no primary known (after --wait)
  5    wait: timed out
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="{status,exec,wait,dev}")

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
    wait.add_argument("--max-lag", type=_count, default=1000, metavar="MS", help="with --synced (default: 1000 ms)")
    wait.add_argument("--timeout", type=_seconds, default=60.0, metavar="SECONDS", help="default: 60")
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see :data:`EXIT_CODES_HELP`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "dev":  # the local cluster: its own options, see docs/devcluster.md
        from litefs_route.devcluster.cli import main as dev_main

        return dev_main(argv[1:], prog="litefs-route dev")
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="litefs-route: %(levelname)s %(message)s"
    )
    instance_id: str = args.instance_id or default_instance_id()
    commands = {"status": _status, "exec": _exec, "wait": _wait}
    try:
        return commands[args.command](args, instance_id)
    except _Fail as fail:
        _say(str(fail))
        return fail.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
