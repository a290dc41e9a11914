"""What every sub-command shares: exit codes, failures, messages, options, reading the mount."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from typing import TypeAlias
from urllib.parse import urlsplit

from .._mount import NodeState, Role, read_node_state
from .._ops.registry import DEFAULT_TABLE, GONE_AFTER
from .._subscriber import DEFAULT_API_URL, OFF

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
  1    stdout was closed before everything was written (`| head`): nothing more, quietly
  2    usage error (no command at all: this help)
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


class Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(f"litefs-route: {message}", file=sys.stderr, flush=True)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def count(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def api_url(value: str) -> str | None:
    if value == OFF:
        return None
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not http://host:port or 'off': {value!r}")
    return value


def registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", default=DEFAULT_TABLE, help="the registry's table (default: %(default)s)")
    parser.add_argument(
        "--gone-after",
        type=seconds,
        default=GONE_AFTER,
        metavar="SECONDS",
        help="an instance not seen for this long counts as gone (default: %(default)g)",
    )


def mount_dir(args: argparse.Namespace) -> str | None:
    """The configured mount, or None (standalone); exit 3 if it is not a directory."""
    litefs_dir: str | None = args.dir or None
    if litefs_dir is not None and not os.path.isdir(litefs_dir):
        raise Fail(EXIT_MOUNT, f"{litefs_dir}: not a LiteFS mount (no such directory)")
    return litefs_dir


def read_state(litefs_dir: str | None, instance_id: str) -> NodeState:
    state = read_node_state(litefs_dir, instance_id)
    if state.mount_error is not None:
        raise Fail(EXIT_MOUNT, f"{litefs_dir}: not a readable LiteFS mount ({state.detail})")
    return state


def describe(state: NodeState) -> str:
    if state.role is Role.REPLICA:
        return f"this node is a replica (primary: {state.primary_id}; {state.detail})"
    if state.role is Role.NO_PRIMARY:
        return f"no primary is known ({state.detail})"
    return f"this node is {state.role.value} ({state.detail})"


def ms(lag_ms: int | None) -> str:
    return "unknown" if lag_ms is None else f"{lag_ms} ms"


def database(args: argparse.Namespace, litefs_dir: str | None) -> str:
    """The database's path: --database in the mount (or, standalone, the current directory)."""
    if not args.database:
        raise Fail(EXIT_USAGE, f"{args.command} needs --database (or $DATABASE_FILENAME)")
    return os.path.join(litefs_dir or ".", args.database)


def unreadable(exc: sqlite3.DatabaseError) -> str:
    return f"the database cannot be read ({exc}): it is not a SQLite database, or it is corrupt"


#: What ``add_subparsers()`` returns: each sub-command's module adds its parser to it.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: Every sub-command's help keeps the layout of the exit codes' table.
FORMATTER = argparse.RawDescriptionHelpFormatter


def common_options() -> argparse.ArgumentParser:
    """The options every sub-command takes (a parent parser)."""
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
        type=api_url,
        help="LiteFS's HTTP API, whose event stream wakes waits instead of polling the mount "
        f"(default: $LITEFS_API_URL, else {DEFAULT_API_URL}; 'off': always poll)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    return common
