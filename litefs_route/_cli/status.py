"""``litefs-route status``: this node's role, the primary, lag and TXID."""

from __future__ import annotations

import argparse
import json

from .._mount import Position, read_position
from .._ops.waits import read_state_from_stream
from .common import EXIT_CODES_HELP, EXIT_MOUNT, EXIT_OK, FORMATTER, Fail, Subcommands, mount_dir, read_state, say


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    status = commands.add_parser(
        "status",
        parents=[common],
        help="print the role, the primary, lag and TXID",
        description="Print this node's role (primary, replica, no-primary, standalone), this instance, "
        "the primary, the lag in ms and, with a database, its TXID.",
        epilog=EXIT_CODES_HELP,
        formatter_class=FORMATTER,
    )
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")


def run(args: argparse.Namespace, instance_id: str) -> int:
    litefs_dir = mount_dir(args)
    state = read_state(litefs_dir, instance_id)
    source = "mount"
    if litefs_dir is not None and args.api_url:
        on_stream = read_state_from_stream(args.api_url, instance_id)
        if on_stream is not None and (on_stream.role, on_stream.primary_id) == (state.role, state.primary_id):
            source = "events"
        elif on_stream is not None:
            say(
                f"LiteFS's API at {args.api_url} says {on_stream.role} (primary {on_stream.primary_id or '-'}), "
                f"the mount says {state.role}: showing the mount's (is --api-url this mount's LiteFS?)"
            )
    position: Position | None = None
    if args.database and litefs_dir is not None:
        try:
            position = read_position(litefs_dir, args.database)
        except OSError as exc:
            raise Fail(EXIT_MOUNT, f"{litefs_dir}: cannot read {args.database}-pos ({exc.strerror})") from exc
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
