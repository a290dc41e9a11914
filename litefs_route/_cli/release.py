"""``litefs-route release``: which release each instance runs (a registry in the database)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sqlite3
import threading
import time

from .._ops.halt import HaltLockError
from .._ops.registry import RENEW_EVERY, Heartbeat, default_release, instances, wait_for_release
from .._ops.waits import WaitTimeout
from .common import (
    EXIT_CODES_HELP,
    EXIT_DATABASE,
    EXIT_MOUNT,
    EXIT_NOT_WRITTEN,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    FORMATTER,
    Fail,
    Subcommands,
    count,
    database,
    mount_dir,
    registry_options,
    say,
    seconds,
    unreadable,
)


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    release = commands.add_parser(
        "release",
        help="which release each instance runs (a registry in the database)",
        description="Each instance records its release in the replicated database (on a replica through "
        "LiteFS's HALT lock); after-release steps wait for all of them (exec --after-release).",
        epilog=EXIT_CODES_HELP,
        formatter_class=FORMATTER,
    )
    actions = release.add_subparsers(dest="action", required=True, metavar="{register,heartbeat,status,wait}")
    for name, summary in (
        ("register", "record this instance's release once (at start)"),
        ("heartbeat", f"record it, then renew it every --every seconds until stopped (default {RENEW_EVERY:g})"),
    ):
        action = actions.add_parser(name, parents=[common], help=summary, description=summary, epilog=EXIT_CODES_HELP)
        action.add_argument("--release", default=default_release(), help="default: $FLY_IMAGE_REF")
        action.add_argument("--schema", type=count, metavar="N", help="the schema version this release's code needs")
        registry_options(action)
        if name == "heartbeat":
            action.add_argument("--every", type=seconds, default=RENEW_EVERY, metavar="SECONDS")
    shown = actions.add_parser(
        "status", parents=[common], help="every live instance, its release, schema, last seen", epilog=EXIT_CODES_HELP
    )
    shown.add_argument("--json", action="store_true", help="a JSON list on stdout")
    shown.add_argument("--all", action="store_true", help="gone instances too")
    registry_options(shown)
    waits = actions.add_parser(
        "wait", parents=[common], help="block until every live instance runs --all-on", epilog=EXIT_CODES_HELP
    )
    waits.add_argument("--all-on", required=True, metavar="RELEASE")
    waits.add_argument("--timeout", type=seconds, default=600.0, metavar="SECONDS", help="default: 600")
    registry_options(waits)


def _stop_on_signals(beat: Heartbeat) -> None:
    """SIGTERM, SIGINT and SIGHUP end the heartbeat after a renewal in flight, never in its middle.

    Cut off mid-renewal on a replica, closing the HALT lock's file left LiteFS
    v0.5.14 stuck, and the primary's database locked (see :class:`Heartbeat`).
    """

    def stop(signum: int, frame: object) -> None:
        # From another thread: stopping takes the heartbeat's event lock, which the main
        # thread (interrupted here) may hold at this very moment.
        threading.Thread(target=beat.stop, name="litefs-route heartbeat stop", daemon=True).start()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)


def run(args: argparse.Namespace, instance_id: str) -> int:
    litefs_dir = mount_dir(args)
    db_path = database(args, litefs_dir)
    try:
        if args.action in ("register", "heartbeat"):
            if not args.release:
                raise Fail(EXIT_USAGE, f"release {args.action} needs --release (or $FLY_IMAGE_REF)")
            every = getattr(args, "every", RENEW_EVERY)
            beat = Heartbeat(
                db_path,
                release=args.release,
                schema=args.schema,
                instance_id=instance_id,
                table=args.table,
                every=every,
            )
            if args.action == "heartbeat":
                _stop_on_signals(beat)
            record = beat.renew(starting=True)
            say(f"{record.instance} registered on release {record.release}")
            if args.action == "heartbeat":
                beat.run(on_error=lambda exc: say(f"renewing failed, trying again in {every:g} s: {exc}"))
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
            on_wait=lambda behind: say(
                f"waiting for every instance to run {args.all_on}; not yet: "
                + (", ".join(f"{r.instance} ({r.release})" for r in behind) or "no instance has registered")
            ),
        )
        say(f"every live instance runs {args.all_on}: {', '.join(r.instance for r in live)}")
        return EXIT_OK
    except (HaltLockError, sqlite3.OperationalError, ValueError) as exc:
        raise Fail(EXIT_NOT_WRITTEN if args.action in ("register", "heartbeat") else EXIT_MOUNT, str(exc)) from None
    except sqlite3.DatabaseError as exc:
        raise Fail(EXIT_DATABASE, f"release {args.action}: {unreadable(exc)}") from None
    except WaitTimeout as exc:
        raise Fail(EXIT_TIMEOUT, f"release wait: {exc}") from None
