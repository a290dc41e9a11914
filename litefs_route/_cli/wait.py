"""``litefs-route wait``: block until this node is primary, is synced, or has a TXID or a schema version."""

from __future__ import annotations

import argparse

from .._ops.waits import WaitTimeout, wait_for_primary, wait_for_schema, wait_for_sync, wait_for_txid
from .common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    FORMATTER,
    Fail,
    Subcommands,
    count,
    database,
    describe,
    mount_dir,
    ms,
    read_state,
    say,
    seconds,
)


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    wait = commands.add_parser(
        "wait",
        parents=[common],
        help="block until this node is primary, is synced, or has a TXID",
        description="Block until the condition holds, then exit 0; exit 5 on timeout.",
        epilog=EXIT_CODES_HELP,
        formatter_class=FORMATTER,
    )
    what = wait.add_mutually_exclusive_group(required=True)
    what.add_argument("--primary", action="store_true", help="until this node is the primary")
    what.add_argument("--synced", action="store_true", help="until this node's lag is at most --max-lag")
    what.add_argument("--txid", type=count, metavar="N", help="until --database's TXID is at least N")
    what.add_argument(
        "--schema", type=count, metavar="N", help="until --database's schema (PRAGMA user_version, or --query) is >= N"
    )
    wait.add_argument("--max-lag", type=count, default=1000, metavar="MS", help="with --synced (default: 1000 ms)")
    wait.add_argument("--query", default="PRAGMA user_version", help="with --schema: SQL whose first value is it")
    wait.add_argument("--timeout", type=seconds, default=60.0, metavar="SECONDS", help="default: 60")


def run(args: argparse.Namespace, instance_id: str) -> int:
    if args.txid is not None and not args.database:
        raise Fail(EXIT_USAGE, "wait --txid needs --database (or $DATABASE_FILENAME)")
    litefs_dir = mount_dir(args)
    state = read_state(litefs_dir, instance_id)
    timeout: float = args.timeout
    try:
        if args.primary:
            state = wait_for_primary(
                litefs_dir,
                timeout,
                this_node=True,
                instance_id=instance_id,
                api_url=args.api_url,
                on_wait=lambda s: say(f"waiting up to {timeout:g} s to be the primary; {describe(s)}"),
            )
            say(describe(state))
        elif args.synced:
            state = wait_for_sync(
                litefs_dir,
                timeout,
                max_lag_ms=args.max_lag,
                instance_id=instance_id,
                on_wait=lambda s: say(
                    f"waiting up to {timeout:g} s for lag <= {args.max_lag} ms; {describe(s)}, lag {ms(s.lag_ms)}"
                ),
            )
            say(f"synced: {describe(state)}, lag {ms(state.lag_ms)}")
        elif args.schema is not None:
            try:
                version = wait_for_schema(
                    database(args, litefs_dir),
                    args.schema,
                    timeout,
                    query=args.query,
                    on_wait=lambda v: say(f"waiting up to {timeout:g} s for schema {args.schema} (now: {v})"),
                )
            except ValueError as exc:
                raise Fail(EXIT_USAGE, f"wait --schema: {exc}") from None
            say(f"the schema is at {version}")
        elif litefs_dir is None:
            say(f"no LiteFS mount (standalone): no TXID to wait for on {args.database}")
        else:
            position = wait_for_txid(
                litefs_dir,
                args.database,
                args.txid,
                timeout,
                api_url=args.api_url,
                on_wait=lambda p: say(
                    f"waiting up to {timeout:g} s for {args.database} to reach TXID {args.txid} "
                    f"(now: {'unknown' if p is None else p.txid})"
                ),
            )
            say(f"{args.database} is at TXID {position.txid}")
    except WaitTimeout as exc:
        raise Fail(EXIT_TIMEOUT, f"wait: {exc}") from None
    return EXIT_OK
