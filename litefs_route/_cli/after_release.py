"""``litefs-route exec --if-primary --after-release R``: the step, once every instance runs R."""

from __future__ import annotations

import argparse
import shlex
import sqlite3

from .._ops.steps import StepClaimed, run_after_release
from .._ops.waits import WaitTimeout
from .common import (
    EXIT_DATABASE,
    EXIT_MOUNT,
    EXIT_NO_PRIMARY,
    EXIT_OK,
    EXIT_STEP_CLAIMED,
    EXIT_TIMEOUT,
    Fail,
    database,
    say,
    unreadable,
)


def run_after_release_step(args: argparse.Namespace, litefs_dir: str | None, instance_id: str, cmd: list[str]) -> int:
    release, step, shown = args.after_release, args.step, shlex.join(cmd)
    try:
        code = run_after_release(
            database(args, litefs_dir),
            release,
            cmd,
            args.timeout,
            step=step,
            instance_id=instance_id,
            litefs_dir=litefs_dir,
            table=args.table,
            gone_after=args.gone_after,
            on_wait=lambda behind: say(
                f"waiting to run {shown} until every instance runs {release}; not yet: "
                + (", ".join(f"{r.instance} ({r.release})" for r in behind) or "no instance has registered")
            ),
        )
    except StepClaimed as exc:
        raise Fail(EXIT_STEP_CLAIMED, f"not running {shown}: {exc}") from None
    except WaitTimeout as exc:
        raise Fail(EXIT_TIMEOUT, f"not running {shown}: {exc}") from None
    except RuntimeError as exc:
        raise Fail(EXIT_NO_PRIMARY, f"not running {shown}: {exc}") from None
    except sqlite3.OperationalError as exc:
        raise Fail(EXIT_MOUNT, f"not running {shown}: the registry cannot be read or written ({exc})") from None
    except sqlite3.DatabaseError as exc:
        raise Fail(EXIT_DATABASE, f"not running {shown}: {unreadable(exc)}") from None
    except sqlite3.Error as exc:
        raise Fail(EXIT_MOUNT, f"not running {shown}: the registry cannot be read or written ({exc})") from None
    if code is None:
        say(f"skipped {shown}: step {step!r} of release {release} already ran")
        return EXIT_OK
    say(f"{shown} exited {code}" + ("; recorded as done" if code == 0 else "; not recorded, it runs again next time"))
    return code
