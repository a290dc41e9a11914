"""Reading a LiteFS mount: who is primary, how far behind, which transaction.

LiteFS exposes its state as small files in the mount (see the LiteFS docs):

``.primary``
    Present only on a replica that knows the primary; holds the primary's
    lease hostname (on Fly, the Machine ID) and one ``\\n``. Absent on the
    primary *and* on a node that knows no primary.
``.lag``
    ``%+010d`` milliseconds of replication lag; exactly ``+000000000`` only
    while this node holds the lease. This is what tells "I am primary" from
    "nobody is primary" when ``.primary`` is absent. Every LiteFS since 0.5
    has it; a folder with neither file is a mount point whose LiteFS is not
    running (real LiteFS unmounts on exit), so it counts as "no primary".
``<db>-pos``
    ``%016x/%016x\\n``: the database's TXID and checksum.

Every read is a FUSE round trip, so callers cache (:mod:`litefs_route._state_cache`).
Nothing read here is trusted: content that does not parse is treated as
absent, and only a well-formed host name is ever returned as a primary.
"""

from __future__ import annotations

import enum
import errno
import os
import re
import socket
from dataclasses import dataclass

__all__ = [
    "NodeState",
    "Position",
    "Role",
    "default_instance_id",
    "is_valid_instance_id",
    "missing_mount",
    "parse_lag",
    "parse_position",
    "parse_primary",
    "read_node_state",
    "read_position",
]

# A host name or Fly Machine ID: letters, digits, '.', '_' and '-', at most
# 253 characters. Nothing else can reach a header or a fly-replay target, so a
# garbled or hostile .primary can never inject a header or a replay field.
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_LAG = re.compile(rb"[+-]?[0-9]{1,10}")
_POSITION = re.compile(rb"([0-9a-f]{16})/([0-9a-f]{16})\n?")

# .primary holds at most a 253-byte host name and a newline; anything longer
# is garbled and we do not need to read it all to know that.
_READ_LIMIT = 512

# errno values that mean "this file is not there": LiteFS answers ENOENT for
# .primary from open(), read() or stat(), whichever reaches it first.
_ABSENT = (errno.ENOENT, errno.ENOTDIR)


def is_valid_instance_id(value: str) -> bool:
    """True if *value* may be used as a replay target or a header value."""
    return _INSTANCE_ID.fullmatch(value) is not None


def default_instance_id() -> str:
    """This instance's id: ``FLY_MACHINE_ID``, else the host name (as LiteFS)."""
    return os.environ.get("FLY_MACHINE_ID") or socket.gethostname()


def parse_primary(data: bytes) -> str | None:
    """The primary's id from ``.primary`` content, or None if it is not one."""
    if data.endswith(b"\n"):
        data = data[:-1]
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if is_valid_instance_id(text) else None


def parse_lag(data: bytes) -> int | None:
    """Milliseconds from ``.lag`` content (newline optional), or None."""
    data = data.strip()
    if _LAG.fullmatch(data) is None:
        return None
    return int(data)


@dataclass(frozen=True, slots=True)
class Position:
    """A database's replication position, from ``<db>-pos``."""

    txid: int
    checksum: int


def parse_position(data: bytes) -> Position | None:
    """The position from ``<db>-pos`` content, or None if it does not parse."""
    match = _POSITION.fullmatch(data)
    if match is None:
        return None
    return Position(int(match[1], 16), int(match[2], 16))


def _read_small(path: str) -> bytes | None:
    """Read a small file with 3 syscalls; None if it does not exist.

    ``os.open``/``os.read`` rather than ``open().read()``: the buffered file
    object adds fstat/ioctl/lseek calls, each a FUSE round trip on LiteFS.
    Other OSErrors (EIO, EACCES, ENOTCONN from a dead mount) propagate.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise
    try:
        return os.read(fd, _READ_LIMIT)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise
    finally:
        os.close(fd)


class Role(str, enum.Enum):
    """What this node is, as far as routing is concerned."""

    #: This node holds the lease.
    PRIMARY = "primary"
    #: Another node is primary; writes must be replayed to it.
    REPLICA = "replica"
    #: A mount with no known primary: election, lost lease, dead mount.
    NO_PRIMARY = "no-primary"
    #: No LiteFS mount at all: local development, every request runs here.
    STANDALONE = "standalone"

    # "replica", not "Role.REPLICA": the value is what logs, f-strings and JSON show.
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass(frozen=True, slots=True)
class NodeState:
    """One reading of the mount, with what routing needs from it."""

    role: Role
    instance_id: str
    #: The primary's id: this node's own id on a primary or standalone, the
    #: other node's on a replica, None when no primary is known; with
    #: :attr:`primary_is_region`, the primary's region.
    primary_id: str | None
    #: Replication lag in ms from ``.lag``, None when absent or garbled.
    lag_ms: int | None = None
    #: Why the role was chosen, for logs (never contains file content).
    detail: str = ""
    #: The errno name (``"EIO"``, ``"ENOTCONN"``, ``"ENOENT"`` for a missing
    #: directory; the exception's class name if it has no errno) when the
    #: mount itself could not be read; None when it was read (whatever it held).
    mount_error: str | None = None
    #: True if the folder held LiteFS's files (``.primary`` or ``.lag``).
    litefs_seen: bool = False
    #: True if the configured directory does not exist at all (ENOENT on the
    #: directory itself): a misconfiguration, not an election. A directory that
    #: exists but is not (yet) a LiteFS mount is not this.
    mount_missing: bool = False
    #: True if :attr:`primary_id` names a region, not an instance: writes are
    #: replayed with ``fly-replay: region=`` (a source that routes by region, as
    #: Postgres with ``PRIMARY_REGION``).
    primary_is_region: bool = False

    @property
    def is_primary(self) -> bool:
        """True if writes may run on this node."""
        return self.role in (Role.PRIMARY, Role.STANDALONE)


def read_node_state(litefs_dir: str | None, instance_id: str) -> NodeState:
    """Read ``.primary`` and ``.lag`` from *litefs_dir* and decide the role.

    Never raises for anything the mount holds or fails to hold:

    ============================================  ============
    mount                                         role
    ============================================  ============
    no directory configured (None or "")          STANDALONE
    a directory that does not exist               NO_PRIMARY (``mount_missing``)
    ``.primary`` names another valid host         REPLICA
    ``.primary`` names this instance              PRIMARY
    ``.primary`` garbled, or the mount unreadable NO_PRIMARY
    no ``.primary``, ``.lag`` is zero             PRIMARY
    no ``.primary``, ``.lag`` non-zero            NO_PRIMARY
    no ``.primary``, no parsable ``.lag``         NO_PRIMARY (not a live mount)
    ============================================  ============
    """
    if not litefs_dir:
        return NodeState(Role.STANDALONE, instance_id, instance_id, detail="no LiteFS directory configured")
    try:
        raw_primary = _read_small(os.path.join(litefs_dir, ".primary"))
        raw_lag = _read_small(os.path.join(litefs_dir, ".lag"))
        if raw_primary is None and raw_lag is None:
            missing = missing_mount(litefs_dir)
            if missing is not None:
                # Never "standalone", where every write would run here.
                return NodeState(
                    Role.NO_PRIMARY, instance_id, None, detail=missing, mount_error="ENOENT", mount_missing=True
                )
    except OSError as exc:
        error = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        return NodeState(Role.NO_PRIMARY, instance_id, None, detail=f"mount unreadable: {error}", mount_error=error)
    lag = parse_lag(raw_lag) if raw_lag is not None else None
    if raw_primary is not None:
        primary = parse_primary(raw_primary)
        if primary is None:
            garbled = f".primary garbled ({len(raw_primary)} bytes)"
            return NodeState(Role.NO_PRIMARY, instance_id, None, lag, garbled, litefs_seen=True)
        if primary == instance_id:
            named = ".primary names this instance"
            return NodeState(Role.PRIMARY, instance_id, instance_id, lag, named, litefs_seen=True)
        return NodeState(Role.REPLICA, instance_id, primary, lag, ".primary present", litefs_seen=True)
    if lag is None:
        # Every LiteFS since 0.5 shows .lag. A folder without it is not a live
        # mount: typically the mount point left behind when LiteFS stopped, where
        # a write would land in a stray local file. Refuse rather than guess.
        detail = "no .primary and no readable .lag: not a LiteFS mount (is LiteFS running?)"
        return NodeState(Role.NO_PRIMARY, instance_id, None, detail=detail)
    if lag == 0:
        return NodeState(Role.PRIMARY, instance_id, instance_id, 0, "holds the lease: .lag is zero", litefs_seen=True)
    return NodeState(Role.NO_PRIMARY, instance_id, None, lag, "no .primary and .lag is non-zero", litefs_seen=True)


def missing_mount(litefs_dir: str) -> str | None:
    """Why *litefs_dir* is not there, if the directory itself does not exist (ENOENT); else None.

    Only the directory's own absence: one that exists, empty or holding no
    ``.primary`` yet (LiteFS starting, or stopped), is LiteFS's business. Any
    other error (EACCES, ENOTCONN) propagates: the mount is unreadable.
    """
    try:
        os.stat(litefs_dir)
    except FileNotFoundError:
        return f"the LiteFS directory {litefs_dir} does not exist"
    return None


def read_position(litefs_dir: str, database: str) -> Position | None:
    """The position of *database* in the mount; None if absent or garbled.

    Raises OSError if the mount itself cannot be read.
    """
    raw = _read_small(os.path.join(litefs_dir, f"{database}-pos"))
    return None if raw is None else parse_position(raw)
