"""Run an example locally as a LiteFS primary or replica, without LiteFS.

The folder is made by the dev cluster's :func:`~litefs_route_devcluster.local_mount.make_mount`
(``python -m litefs_route_devcluster.local_mount`` does the same for any app).
For several instances with real replication and a Fly-like proxy, use the dev cluster.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from litefs_route_devcluster.local_mount import make_mount

__all__ = ["make_mount", "prepare"]


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
