"""``litefs-route exec --if-primary``: run a command only on the primary (``--after-release``: once per release)."""

from __future__ import annotations

import argparse
import os
import shlex

from .._mount import NodeState, Role
from .._ops.waits import WaitTimeout, wait_for_primary
from .after_release import run_after_release_step
from .common import (
    EXIT_CANNOT_RUN,
    EXIT_CODES_HELP,
    EXIT_NO_PRIMARY,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    FORMATTER,
    Fail,
    Subcommands,
    describe,
    mount_dir,
    read_state,
    registry_options,
    say,
    seconds,
)


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "exec",
        parents=[common],
        help="run a command only on the primary",
        description="Run CMD only if this node is the primary (or standalone); on a replica print why it "
        "was skipped and exit 0, so a LiteFS `exec` entry does not bring the mount down.",
        epilog=EXIT_CODES_HELP,
        formatter_class=FORMATTER,
    )
    parser.add_argument("--if-primary", action="store_true", required=True, help="run CMD only on the primary")
    parser.add_argument(
        "--wait",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for a primary to be known (default: 0, decide now)",
    )
    parser.add_argument(
        "--after-release",
        metavar="RELEASE",
        help="run CMD once every live instance reports RELEASE, and once per release for the cluster "
        "(recorded in the registry: see `release`)",
    )
    parser.add_argument(
        "--step", default="after-release", help="with --after-release: the step's name (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=seconds, default=600.0, metavar="SECONDS", help="with --after-release (default: 600)"
    )
    registry_options(parser)
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command and its arguments")


def run(args: argparse.Namespace, instance_id: str) -> int:
    cmd: list[str] = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise Fail(EXIT_USAGE, "exec: no command given (usage: litefs-route exec --if-primary -- CMD ...)")
    shown = shlex.join(cmd)
    litefs_dir = mount_dir(args)
    state = read_state(litefs_dir, instance_id)
    if state.role is Role.NO_PRIMARY and args.wait > 0:
        say(f"no primary known yet; waiting up to {args.wait:g} s before deciding on: {shown}")
        try:
            state = wait_for_primary(litefs_dir, args.wait, instance_id=instance_id, api_url=args.api_url)
        except WaitTimeout as exc:
            if isinstance(exc.last, NodeState):
                state = exc.last
    if state.role is Role.NO_PRIMARY:
        raise Fail(EXIT_NO_PRIMARY, f"not running {shown}: {describe(state)}")
    if not state.is_primary:
        say(f"skipped {shown}: {describe(state)}")
        return EXIT_OK
    if args.after_release:
        return run_after_release_step(args, litefs_dir, instance_id, cmd)
    if state.role is Role.STANDALONE:
        say(f"no LiteFS mount, standalone counts as the primary; running: {shown}")
    else:
        say(f"{describe(state)}; running: {shown}")
    # exec, not a child: the command gets LiteFS's signals and its exit code is ours.
    try:
        os.execvp(cmd[0], cmd)  # noqa: S606 - the user's own command line, argv as given
    except FileNotFoundError:
        raise Fail(EXIT_NOT_FOUND, f"{cmd[0]}: command not found") from None
    except OSError as exc:
        raise Fail(EXIT_CANNOT_RUN, f"{cmd[0]}: cannot run ({exc.strerror})") from None
