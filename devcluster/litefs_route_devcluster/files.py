"""Writing a LiteFS-like mount folder, and handling SQLite database files raw.

The *write* side of :mod:`litefs_route._mount`: formats are produced here and
checked against mount's parsers in the tests, so the two cannot drift.

Every small file is written atomically (a temporary file in the same folder,
then ``os.replace``), so a reader never sees partial content.

Database files are rewritten in place, page by page, while holding SQLite's
own locks (rollback-journal locking, taken as Linux open-file-description
locks so that they work in a process that also uses SQLite on the same file).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import tempfile
import time
from collections.abc import Iterator

__all__ = [
    "NO_PRIMARY_LAG",
    "DatabaseLockTimeout",
    "exclusive_lock",
    "format_lag",
    "format_position",
    "header_counter",
    "patch_header",
    "read_database",
    "write_atomic",
    "write_database",
    "write_lag",
    "write_position",
    "write_primary",
]

#: What ``.lag`` reads on a node that knows no primary.
NO_PRIMARY_LAG = 2147483647
# LiteFS's .lag file size: len("%+010d\n" % 0).
_LAG_SIZE = 11

# SQLite file header offsets (sqlite.org/fileformat.html).
_WRITE_VERSION = 18
_READ_VERSION = 19
_CHANGE_COUNTER = 24
_VERSION_VALID_FOR = 92
_HEADER_SIZE = 100

# SQLite's rollback-journal lock bytes (os_unix.c / os.h).
_PENDING_BYTE = 0x40000000
_RESERVED_BYTE = _PENDING_BYTE + 1
_SHARED_FIRST = _PENDING_BYTE + 2
_SHARED_SIZE = 510

_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)


def format_lag(ms: int) -> bytes:
    """``.lag`` content exactly as LiteFS shows it: ``%+010d\\n`` cut to the file's 11 bytes.

    So ``+000000042\\n``, but ``+2147483647`` (no newline) with no primary:
    LiteFS sizes the file for ``+000000000\\n`` (seen on LiteFS v0.5.14).
    """
    return (b"%+010d\n" % ms)[:_LAG_SIZE]


def format_position(txid: int, checksum: int) -> bytes:
    """``<db>-pos`` content: ``%016x/%016x\\n``."""
    return b"%016x/%016x\n" % (txid, checksum)


def write_atomic(path: str, data: bytes) -> None:
    """Write *data* to *path* so that readers see the old or the new content, never a mix."""
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_primary(folder: str, primary: str | None) -> None:
    """``.primary``: the primary's id and exactly one newline; None removes it."""
    path = os.path.join(folder, ".primary")
    if primary is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    # LiteFS writes the id and one newline; an id with a space or a control character would garble that file.
    if not primary or not primary.isascii() or not primary.isprintable() or " " in primary:
        raise ValueError(f"not a valid instance id: {primary!r}")
    write_atomic(path, primary.encode("ascii") + b"\n")


def write_lag(folder: str, ms: int) -> None:
    """``.lag``: ``+000000000`` on the primary, :data:`NO_PRIMARY_LAG` with no primary."""
    write_atomic(os.path.join(folder, ".lag"), format_lag(ms))


def write_position(folder: str, database: str, txid: int, checksum: int) -> None:
    """``<database>-pos``: the TXID and checksum this node has."""
    write_atomic(os.path.join(folder, f"{database}-pos"), format_position(txid, checksum))


# -- SQLite files ---------------------------------------------------------


def header_counter(data: bytes) -> int:
    """The "file change counter" (offset 24): +1 per committed transaction in rollback mode."""
    return int.from_bytes(data[_CHANGE_COUNTER : _CHANGE_COUNTER + 4], "big")


def patch_header(data: bytes, *, writable: bool, counter: int | None = None) -> bytes:
    """*data* with the write version set (1: writable, 3: SQLite refuses writes) and, optionally, a new counter.

    SQLite treats a file whose "file format write version" is greater than 2
    as read-only ("attempt to write a readonly database"), even as root.
    Readers notice the change only if the change counter changes too: they
    keep their page cache (page 1 included) while it is unchanged.
    """
    if len(data) < _HEADER_SIZE:
        return data
    out = bytearray(data)
    out[_WRITE_VERSION] = 1 if writable else 3
    if counter is not None:
        raw = (counter & 0xFFFFFFFF).to_bytes(4, "big")
        out[_CHANGE_COUNTER : _CHANGE_COUNTER + 4] = raw
        out[_VERSION_VALID_FOR : _VERSION_VALID_FOR + 4] = raw
    return bytes(out)


def is_wal(data: bytes) -> bool:
    """True if the header says WAL mode (versions 2), which the dev cluster does not support."""
    return len(data) >= _HEADER_SIZE and data[_READ_VERSION] == 2


def read_database(fd: int) -> bytes:
    """The whole file behind *fd* (the caller holds a lock that keeps it still)."""
    size = os.fstat(fd).st_size
    parts: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def page_size(data: bytes) -> int:
    if len(data) < _HEADER_SIZE:
        return 4096
    size = int.from_bytes(data[16:18], "big")
    return 65536 if size == 1 else (size or 4096)


def write_database(fd: int, data: bytes, previous: bytes | None) -> int:
    """Make the file behind *fd* hold *data*, writing only pages that differ from *previous*.

    The caller holds :func:`exclusive_lock`. Returns the number of pages written.
    """
    step = page_size(data)
    written = 0
    for offset in range(0, len(data), step):
        page = data[offset : offset + step]
        if previous is not None and previous[offset : offset + step] == page:
            continue
        os.pwrite(fd, page, offset)
        written += 1
    if previous is None or len(previous) != len(data):
        os.ftruncate(fd, len(data))
    return written


def _ofd_lock(fd: int, kind: int, start: int, length: int) -> bool:
    """Try an open-file-description lock; False if another holder conflicts."""
    # struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid (+ padding).
    flock = struct.pack("hhqqi4x", kind, os.SEEK_SET, start, length, 0)
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, flock)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


class DatabaseLockTimeout(TimeoutError):
    """SQLite readers or writers kept the database busy for too long."""


@contextlib.contextmanager
def exclusive_lock(fd: int, timeout: float = 5.0, path: str = "") -> Iterator[None]:
    """Hold SQLite's EXCLUSIVE lock on a rollback-journal database, as an outside writer would.

    Takes RESERVED, then PENDING, then the SHARED range, never waiting while
    holding anything: on a conflict everything is released and retried (a
    connection holding SHARED that wants RESERVED could otherwise deadlock
    with us). SQLite's own connections meet SQLITE_BUSY meanwhile and retry
    through their busy handler.
    """
    deadline = time.monotonic() + timeout
    held: list[tuple[int, int]] = []

    def release() -> None:
        while held:
            start, length = held.pop()
            _ofd_lock(fd, fcntl.F_UNLCK, start, length)

    delay = 0.0005
    try:
        while True:
            for start, length in ((_RESERVED_BYTE, 1), (_PENDING_BYTE, 1)):
                if not _ofd_lock(fd, fcntl.F_WRLCK, start, length):
                    break
                held.append((start, length))
            else:
                # Holding PENDING keeps new readers out; wait a little for the current ones.
                spin_until = time.monotonic() + 0.05
                while True:
                    if _ofd_lock(fd, fcntl.F_WRLCK, _SHARED_FIRST, _SHARED_SIZE):
                        held.append((_SHARED_FIRST, _SHARED_SIZE))
                        break
                    if time.monotonic() > spin_until:
                        break
                    time.sleep(0.0005)
                if len(held) == 3:
                    break
            release()
            if time.monotonic() > deadline:
                raise DatabaseLockTimeout(f"could not lock {path or fd} within {timeout} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        yield
    finally:
        release()
