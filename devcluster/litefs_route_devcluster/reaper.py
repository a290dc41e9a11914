"""Remove a dev cluster's folder once the process that made it is gone, however it went.

``python -m litefs_route_devcluster.reaper FOLDER`` blocks reading its
stdin, a pipe whose other end only the cluster's process holds. When that
process exits (``quit``, a crash, ``kill -9``, a closed terminal) the pipe
closes and the reaper wakes. It stops every process still working in
FOLDER (the app servers, whose ``LITEFS_DIR`` is under it, and the
``litefs`` nodes, whose config is): SIGTERM, then SIGKILL after a grace
period. Then it unmounts whatever is still mounted under FOLDER (a killed
LiteFS leaves its FUSE mount behind, and removing files through a live mount
would delete them through LiteFS) and removes FOLDER. Linux (``/proc``);
elsewhere it can only remove the folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

__all__ = ["FolderReaper", "is_mounted", "main", "mounts_under", "processes_in", "reap", "stop_processes", "unmount"]


def processes_in(folder: str) -> list[int]:
    """Pids (not ours) whose command line names *folder*, or whose ``LITEFS_DIR`` is in it."""
    root = os.path.realpath(folder).encode()
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        litefs_dir = next((v[len(b"LITEFS_DIR=") :] for v in environ if v.startswith(b"LITEFS_DIR=")), b"")
        if root + b"/" in cmdline or litefs_dir == root or litefs_dir.startswith(root + b"/"):
            found.append(int(entry))
    return found


def stop_processes(pids: list[int], grace: float) -> None:
    """SIGTERM *pids*, SIGKILL those still there after *grace* seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ", 1)[1][:1] != b"Z"  # a zombie has exited
    except (OSError, IndexError):
        return False


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


def reap(folder: str, grace: float = 5.0) -> None:
    """Stop the processes working in *folder*, unmount what is mounted under it, then remove it."""
    stop_processes(processes_in(folder), grace)  # LiteFS unmounts itself on SIGTERM
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
            [sys.executable, "-m", "litefs_route_devcluster.reaper", folder],
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
        print("usage: python -m litefs_route_devcluster.reaper FOLDER", file=sys.stderr)
        return 2
    # Ignore the signals aimed at the terminal's process group: we outlive it on purpose.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns at EOF: the cluster's process is gone (or closed it)
    reap(args[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
