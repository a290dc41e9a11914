"""A folder that reads as a LiteFS mount, to run one app by hand as a primary or a replica, without LiteFS.

::

    eval "$(python -m litefs_route_devcluster.local_mount --replica-of PRIMARY_ID)"
    gunicorn myapp:app      # litefs-route in it sees a replica of PRIMARY_ID

A replica is a folder whose ``.primary`` names the primary, in LiteFS's
format; a primary is a folder whose ``.lag`` reads zero. The database lives
in the folder, as it would in the mount. The command makes the folder
(default ``./.litefs-local/<role>``) and prints the ``export`` lines of the
environment the app reads (``LITEFS_DIR``, ``DATABASE_FILENAME``,
``FLY_MACHINE_ID``, ``LITEFS_API_URL=off``: no LiteFS answers there). No
replication: for several instances that replicate, use ``litefs-route dev``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .files import write_lag, write_primary

__all__ = ["REPLICA_LAG_MS", "main", "make_mount", "mount_environment"]

#: What a replica's ``.lag`` reads here: a few ms, as a healthy replica shows.
REPLICA_LAG_MS = 15


def make_mount(folder: Path, replica_of: str | None = None) -> Path:
    """Make *folder* (created if missing) a LiteFS mount as a primary, or as a replica of *replica_of*."""
    folder.mkdir(parents=True, exist_ok=True)
    write_primary(str(folder), replica_of)  # None: no .primary, as on the primary
    write_lag(str(folder), REPLICA_LAG_MS if replica_of else 0)
    return folder


def mount_environment(folder: Path, *, instance_id: str, database: str = "app.db") -> dict[str, str]:
    """The environment an app on the mount in *folder* reads."""
    return {
        "LITEFS_DIR": str(folder),
        "DATABASE_FILENAME": database,
        "FLY_MACHINE_ID": instance_id,
        "LITEFS_API_URL": "off",  # no LiteFS, no API: litefs-route reads the folder
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m litefs_route_devcluster.local_mount",
        description="Make a folder that reads as a LiteFS mount (a primary, or a replica of PRIMARY_ID) and "
        'print the environment to run an app on it: eval "$(python -m litefs_route_devcluster.local_mount ...)"',
    )
    parser.add_argument("--replica-of", metavar="PRIMARY_ID", help="a replica of this instance id (default: primary)")
    parser.add_argument("--dir", help="the folder (default: ./.litefs-local/<role>)")
    parser.add_argument("--database", default="app.db", help="DATABASE_FILENAME (default: %(default)s)")
    parser.add_argument("--instance-id", help="FLY_MACHINE_ID (default: local-<role>)")
    args = parser.parse_args(argv)
    role = "replica" if args.replica_of else "primary"
    folder = make_mount(Path(args.dir or Path(".litefs-local") / role).resolve(), args.replica_of)
    environment = mount_environment(folder, instance_id=args.instance_id or f"local-{role}", database=args.database)
    for name, value in environment.items():
        print(f"export {name}={shlex.quote(value)}")
    print(f"# {role} mount ready in {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
