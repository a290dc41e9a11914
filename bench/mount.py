"""Two LiteFS mounts as plain directories, in LiteFS's exact file formats.

``.primary`` is the primary's id and one newline (only on a replica); ``.lag``
is ``%+010d\\n`` milliseconds, exactly zero on the primary; ``<db>-pos`` is
``%016x/%016x\\n``. Written by the dev cluster's one writer of LiteFS's formats.
"""

from __future__ import annotations

from pathlib import Path

from litefs_route_devcluster.files import write_lag, write_position, write_primary

PRIMARY_ID = "3d8d9e5b711e68"  # the shape of a Fly Machine ID
SELF_ID = "e784079b449483"


def make_mounts(root: Path) -> tuple[Path, Path]:
    """(primary mount, replica mount) under *root*."""
    primary, replica = root / "primary", root / "replica"
    for path, lag in ((primary, 0), (replica, 12)):
        path.mkdir(parents=True, exist_ok=True)
        write_lag(str(path), lag)
        write_position(str(path), "app.db", 42, 0x1234ABCD)
    write_primary(str(replica), PRIMARY_ID)
    return primary, replica
