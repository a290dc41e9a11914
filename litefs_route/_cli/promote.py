"""``litefs-route promote``: move the lease to this candidate and wait until it holds it."""

from __future__ import annotations

import argparse

from .._ops.lease import promote
from .._ops.waits import WaitTimeout
from .common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    FORMATTER,
    Fail,
    Subcommands,
    mount_dir,
    say,
    seconds,
)


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "promote",
        parents=[common],
        help="move the lease to this candidate and wait until it holds it",
        description="Ask LiteFS (POST /promote, as `litefs run -promote`) to hand the lease to this node, "
        "and wait until this node is the primary.",
        epilog=EXIT_CODES_HELP,
        formatter_class=FORMATTER,
    )
    parser.add_argument("--timeout", type=seconds, default=30.0, metavar="SECONDS", help="default: 30")


def run(args: argparse.Namespace, instance_id: str) -> int:
    litefs_dir = mount_dir(args)
    if litefs_dir is None:
        say("no LiteFS mount (standalone): already the primary")
        return EXIT_OK
    if not args.api_url:
        raise Fail(EXIT_USAGE, "promote needs LiteFS's API (--api-url, not 'off')")
    try:
        promote(litefs_dir, args.api_url, args.timeout, instance_id=instance_id)
    except WaitTimeout as exc:
        raise Fail(EXIT_TIMEOUT, f"promote: {exc}") from None
    say(f"{instance_id} is the primary")
    return EXIT_OK
