"""Two LiteFS mounts as plain directories, in LiteFS's exact file formats.

``.primary`` is the primary's id and one newline (only on a replica); ``.lag``
is ``%+010d`` milliseconds, exactly zero on the primary; ``<db>-pos`` is
``%016x/%016x\\n``. (The same formats as ``tests/support.py``'s ``Mount``.)
"""

from __future__ import annotations

from pathlib import Path

PRIMARY_ID = "3d8d9e5b711e68"  # the shape of a Fly Machine ID
SELF_ID = "e784079b449483"


def make_mounts(root: Path) -> tuple[Path, Path]:
    """(primary mount, replica mount) under *root*."""
    primary, replica = root / "primary", root / "replica"
    for path, lag in ((primary, 0), (replica, 12)):
        path.mkdir(parents=True, exist_ok=True)
        (path / ".lag").write_bytes(b"%+010d" % lag)
        (path / "app.db-pos").write_bytes(b"%016x/%016x\n" % (42, 0x1234ABCD))
    (replica / ".primary").write_bytes(PRIMARY_ID.encode() + b"\n")
    return primary, replica
