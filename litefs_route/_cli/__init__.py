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
import errno
import functools
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Protocol

from .._mount import default_instance_id
from . import exec as exec_command
from . import promote, release, run, status, wait
from .common import (
    EXIT_CODES_HELP,
    EXIT_DATABASE,
    EXIT_MOUNT,
    EXIT_NO_PRIMARY,
    EXIT_NOT_WRITTEN,
    EXIT_OK,
    EXIT_STEP_CLAIMED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    FORMATTER,
    Fail,
    Subcommands,
    common_options,
    say,
    unreadable,
)

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


class Subcommand(Protocol):
    """What each sub-command's module has."""

    def add_parser(self, commands: Subcommands, common: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, instance_id: str) -> int: ...


#: The sub-commands of this distribution, one module each, in the order of the help.
COMMANDS: dict[str, Subcommand] = {
    "status": status,
    "exec": exec_command,
    "wait": wait,
    "release": release,
    "promote": promote,
    "run": run,
}

#: Entry points that add a sub-command: ``litefs-route-devcluster`` adds ``dev``.
COMMAND_ENTRY_POINTS = "litefs_route.commands"
#: Sub-commands other distributions provide, by name: their one-line help, also where they are not installed.
PLUGIN_COMMANDS = {"dev": "run a local LiteFS + Fly cluster (pip install litefs-route-devcluster; see its --help)"}
#: What a write to a closed pipe exits with (as Python's docs do: ``litefs-route status | head``).
EXIT_BROKEN_PIPE = 1


@functools.cache
def _plugin_names() -> list[str]:
    installed = [entry.name for entry in entry_points(group=COMMAND_ENTRY_POINTS)]
    return [*PLUGIN_COMMANDS, *(name for name in installed if name not in PLUGIN_COMMANDS and name not in COMMANDS)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litefs-route",
        description="This node's LiteFS role, for scripts, deploys and migrations.",
        epilog=EXIT_CODES_HELP,
        formatter_class=FORMATTER,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = common_options()
    for module in COMMANDS.values():
        module.add_parser(commands, common)
    for name in _plugin_names():
        # Listed (in the help and in a misspelling's choices); main() runs it before this parser is used.
        summary = PLUGIN_COMMANDS.get(name, "provided by another distribution (see its --help)")
        plugin = commands.add_parser(name, help=summary, description=summary, add_help=False)
        plugin.add_argument("arguments", nargs=argparse.REMAINDER)
    return parser


def _run_plugin(name: str, argv: list[str]) -> int:
    """Run the sub-command another distribution provides; it is called as ``main(argv, prog=...)``."""
    for entry in entry_points(group=COMMAND_ENTRY_POINTS, name=name):
        command: Callable[..., int] = entry.load()
        return command(argv, prog=f"litefs-route {name}")
    say(f"{name}: the local cluster is its own distribution: pip install litefs-route-devcluster")
    return EXIT_USAGE


def _run(argv: list[str]) -> int:
    if not argv:  # no command: the whole help, rather than argparse's one-line complaint
        _parser().print_help(sys.stderr)
        say("a command is required")
        return EXIT_USAGE
    if argv[0] in _plugin_names():  # e.g. the local cluster: its own distribution and options
        return _run_plugin(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="litefs-route: %(levelname)s %(message)s"
    )
    instance_id: str = args.instance_id or default_instance_id()
    try:
        return COMMANDS[args.command].run(args, instance_id)
    except Fail as fail:
        say(str(fail))
        return fail.code
    except sqlite3.DatabaseError as exc:  # e.g. wait --schema on a file that is no SQLite database
        say(f"{args.command}: {unreadable(exc)}")
        return EXIT_DATABASE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see :data:`EXIT_CODES_HELP`)."""
    try:
        code = _run(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130
    return code


def _quiet_stdout() -> None:
    # Python's docs (signal, "Note on SIGPIPE"): point stdout at devnull, so
    # that the interpreter's own flush at exit does not fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
