"""Ports for the dev cluster's servers that nobody else is handed before the server binds them.

A port found free (bind to port 0, read it, close) and bound later by a
child process is not reserved, twice over:

- the kernel hands it out again to the next ``bind(("", 0))``, in this
  process or any other: a cluster that picked every node's port before
  starting the first LiteFS gave node1 and node2 the same API port;
- every outgoing connection, of any process, takes its local port from the
  same range (``net.ipv4.ip_local_port_range``), and a listener cannot bind
  a port a connection holds.

So :func:`reserve_port` picks from *outside* the kernel's ephemeral range,
where neither ``bind(0)`` nor ``connect()`` ever goes, and reserves each
port among the processes that pick this way (several test runs at once, a
``litefs-route dev`` beside them) with a lock on byte *port* of one shared
lock file, held by this process until :func:`release_port` or its exit (the
kernel drops the lock however the process ends). Record locks belong to the
process, not to the descriptor, so a set guards the same within the
process. A port someone already listens on is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import tempfile
import threading

__all__ = ["LOCK_FILE", "candidates", "ephemeral_range", "release_port", "reserve_port"]

logger = logging.getLogger("litefs_route_devcluster")

# Below this, the well-known and registered ports of common services (8000, 8080, 9000...).
_LOWEST = 10000
_HIGHEST = 65535
# Assumed when the system does not say: from Linux's default start to the top, which holds
# the BSDs', macOS's and Windows's ranges (49152-65535) too.
_EPHEMERAL_DEFAULT = (32768, 65535)
#: The file whose byte *port* a process locks while it holds *port*.
LOCK_FILE = os.path.join(tempfile.gettempdir(), "litefs-route-ports.lock")

_lock = threading.Lock()
_reserved: set[int] = set()
_lock_fd: int | None = None
_lock_fd_pid = 0
_cursor: int | None = None


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral ports, first and last (Linux's ``ip_local_port_range``; else a safe guess)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first, last = (int(word) for word in f.read().split())
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT
    return first, last


def candidates() -> list[range]:
    """The ranges :func:`reserve_port` picks from: outside the ephemeral range (all of it if nothing is)."""
    first, last = ephemeral_range()
    outside = [r for r in (range(_LOWEST, min(first, _HIGHEST + 1)), range(max(last + 1, _LOWEST), _HIGHEST + 1)) if r]
    return outside or [range(_LOWEST, _HIGHEST + 1)]


def reserve_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on and no cooperating process holds, reserved for this process.

    It stays reserved until :func:`release_port` or the process's exit: a
    server may bind it, close it and bind it again meanwhile. RuntimeError
    if every candidate port is taken.
    """
    global _cursor
    ports = [port for block in candidates() for port in block]
    with _lock:
        if _cursor is None:  # processes start at different places: they rarely contend for a port
            _cursor = (os.getpid() * 7919) % len(ports)
        for step in range(len(ports)):
            port = ports[(_cursor + step) % len(ports)]
            if port in _reserved or not _lock_port(port):
                continue
            if _bindable(host, port):
                _reserved.add(port)
                _cursor = (_cursor + step + 1) % len(ports)
                return port
            _unlock_port(port)
    raise RuntimeError(f"no free port left outside the ephemeral range on {host}")


def release_port(port: int) -> None:
    """Give *port* back (a no-op if this process did not reserve it)."""
    with _lock:
        if port in _reserved:
            _reserved.discard(port)
            _unlock_port(port)


def _bindable(host: str, port: int) -> bool:
    # No SO_REUSEADDR: a port with connections still in TIME_WAIT is skipped too.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _lock_file() -> int | None:
    """This process's descriptor of the shared lock file (opened once: closing any descriptor drops the locks)."""
    global _lock_fd, _lock_fd_pid
    if _lock_fd_pid == os.getpid():
        return _lock_fd
    _lock_fd, _lock_fd_pid = None, os.getpid()
    try:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        logger.warning("cannot open %s (%s): ports are reserved within this process only", LOCK_FILE, exc)
        return None
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # every user's test runs share it (the umask took the group and others' bits)
    _lock_fd = fd
    return fd


def _forked() -> None:
    """In a forked child: the parent's record locks are not inherited, nor are its reservations."""
    global _lock, _lock_fd, _lock_fd_pid
    _lock = threading.Lock()  # another thread may have held it at the fork
    _reserved.clear()
    if _lock_fd is not None:
        with contextlib.suppress(OSError):
            os.close(_lock_fd)  # drops only this child's locks on the file: it holds none
    _lock_fd, _lock_fd_pid = None, 0


def _lock_port(port: int) -> bool:
    fd = _lock_file()
    if fd is None:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port, os.SEEK_SET)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False  # another process holds it
        raise
    return True


def _unlock_port(port: int) -> None:
    fd = _lock_file()
    if fd is not None:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, port, os.SEEK_SET)


os.register_at_fork(after_in_child=_forked)
