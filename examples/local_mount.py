"""Run an example locally as a LiteFS primary or replica, without LiteFS.

A replica is just a folder whose ``.primary`` file names the primary, in
LiteFS's format; a primary is a folder whose ``.lag`` reads zero. The
database lives in the folder, as it would in the LiteFS mount. (For several
instances with real replication and a Fly-like proxy, use the dev cluster.)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from litefs_route_devcluster.files import write_lag, write_primary

#: What a replica's ``.lag`` reads here: a few ms, as a healthy replica shows.
REPLICA_LAG_MS = 15


def make_mount(folder: Path, replica_of: str | None = None) -> Path:
    """Make *folder* (created if missing) a LiteFS mount as a primary, or as a replica of *replica_of*.

    The files are written by the dev cluster's writer of LiteFS's formats.
    """
    folder.mkdir(parents=True, exist_ok=True)
    write_primary(str(folder), replica_of)  # None: no .primary, as on the primary
    write_lag(str(folder), REPLICA_LAG_MS if replica_of else 0)
    return folder


def prepare(argv: list[str] | None = None, *, default_port: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the example as a LiteFS primary or replica.")
    parser.add_argument("--replica-of", metavar="PRIMARY_ID", help="run as a replica of this instance id")
    parser.add_argument("--dir", default=None, help="the mount folder (default: ./.litefs-local/<role>)")
    parser.add_argument("--port", type=int, default=default_port)
    args = parser.parse_args(argv)
    role = "replica" if args.replica_of else "primary"
    mount = make_mount(Path(args.dir or Path(".litefs-local") / role).resolve(), args.replica_of)
    os.environ["LITEFS_DIR"] = str(mount)
    os.environ.setdefault("DATABASE_FILENAME", "app.db")
    os.environ.setdefault("FLY_MACHINE_ID", f"local-{role}")
    print(f"litefs-route example: {role} (FLY_MACHINE_ID={os.environ['FLY_MACHINE_ID']}), mount {mount}")
    print(f"open http://127.0.0.1:{args.port}/")
    return args
