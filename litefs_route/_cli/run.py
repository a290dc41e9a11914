"""``litefs-route run --while-primary -- CMD``: run a command only while this node is the primary."""

from __future__ import annotations

import argparse

from .._subscriber import OFF
from .common import EXIT_USAGE, FORMATTER, Fail, Subcommands, seconds


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    supervise = commands.add_parser(
        "run",
        parents=[common],
        help="run a command only while this node is the primary (workers, schedulers)",
        description="Start CMD when this node is or becomes the primary, stop it (SIGTERM, --grace, SIGKILL) "
        "when it stops being primary; see docs/background-work.md.",
        formatter_class=FORMATTER,
    )
    supervise.add_argument("--while-primary", action="store_true", required=True, help="run CMD only while primary")
    supervise.add_argument("--grace", type=seconds, default=10.0, metavar="SECONDS", help="SIGTERM to SIGKILL (10)")
    supervise.add_argument(
        "--start-delay", type=seconds, default=None, metavar="SECONDS", help="primary this long first (grace + 1)"
    )
    supervise.add_argument("--restart", action="store_true", help="start CMD again when it ends by itself")
    supervise.add_argument("--lock", default=None, metavar="PATH", help="the lock a running copy holds (per command)")
    supervise.add_argument("--interval", type=seconds, default=0.5, metavar="SECONDS", help="mount polling (0.5)")
    supervise.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command and its arguments")


def run(args: argparse.Namespace, instance_id: str) -> int:
    from .._supervisor import main as supervise

    cmd = list(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
    if not cmd:
        raise Fail(EXIT_USAGE, "run: no command given (usage: litefs-route run --while-primary -- CMD ...)")
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
