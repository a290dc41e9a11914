"""Remove a dev cluster's folder once the process that made it is gone, however it went.

``python -m litefs_route.devcluster.reaper FOLDER`` blocks reading its
stdin, a pipe whose other end only the cluster's process holds. When that
process exits (``quit``, a crash, ``kill -9``, a closed terminal) the pipe
closes and the reaper wakes: it unmounts whatever is still mounted under
FOLDER (a LiteFS that was killed leaves its FUSE mount behind, and removing
files through a live mount would delete them through LiteFS), then removes
FOLDER. The cluster's server and LiteFS processes stop by themselves when
their parent dies (``PR_SET_PDEATHSIG``, see :func:`die_with_parent`).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time

__all__ = ["FolderReaper", "die_with_parent", "is_mounted", "main", "mounts_under", "reap", "unmount"]

# prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child (``preexec_fn``): get SIGTERM when the parent dies. Linux only; a no-op elsewhere.

    Linux ties the signal to the *thread* that started the child: start a
    cluster (and its nodes) from a thread that lives as long as the cluster.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def mounts_under(folder: str) -> list[str]:
    """Mount points at or below *folder*, deepest first (from ``/proc/self/mounts``)."""
    root = os.path.realpath(folder)
    found = []
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 2:
                    continue
                # Spaces and other specials in mount points are octal escapes (\040).
                point = fields[1].encode().decode("unicode_escape")
                if point == root or point.startswith(root + os.sep):
                    found.append(point)
    except OSError:
        return []
    return sorted(found, key=len, reverse=True)


def is_mounted(path: str) -> bool:
    """True if *path* is a mount point, dead FUSE mounts included (``os.path.ismount`` says False for those)."""
    return os.path.realpath(path) in mounts_under(path)


def unmount(point: str) -> None:
    """Detach *point* lazily (open files do not block it): ``fusermount3 -u -z``, else ``umount -l``."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is not None:
        subprocess.run([tool, "-u", "-z", point], check=False, capture_output=True)
    if is_mounted(point):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def reap(folder: str, patience: float = 10.0) -> None:
    """Unmount what is mounted under *folder* (giving LiteFS *patience* seconds to do it itself), then remove it."""
    deadline = time.monotonic() + patience
    while mounts_under(folder) and time.monotonic() < deadline:
        time.sleep(0.1)  # LiteFS unmounts itself on the SIGTERM its parent's death sent it
    for point in mounts_under(folder):
        unmount(point)
    if not mounts_under(folder):  # never remove files through a live mount
        shutil.rmtree(folder, ignore_errors=True)


class FolderReaper:
    """Starts the reaper for *folder*; :meth:`close` (after the cluster's own clean-up) lets it finish."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        # Its own session: a Ctrl-C or a closed terminal must not reach it.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "litefs_route.devcluster.reaper", folder],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def close(self, timeout: float = 15.0) -> None:
        """Close the pipe (the reaper removes what is left of the folder) and wait for it. Idempotent."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m litefs_route.devcluster.reaper FOLDER", file=sys.stderr)
        return 2
    # Ignore the signals aimed at the terminal's process group: we outlive it on purpose.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns at EOF: the cluster's process is gone (or closed it)
    reap(args[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
