"""``litefs-route run --while-primary -- CMD``: run a command only while this node is the primary.

One copy of CMD at most on a node: a new one starts only once the previous
one (and its process group) is gone, and only with a lock file that the
running copy holds (inherited: held while any of its processes lives, so a
second supervisor of the same command, or a new one after this one was
killed, cannot start a second copy). CMD starts when the node becomes the
primary (at start, or on a promotion) and *start_delay* seconds later, so
that the previous primary's copy, told to stop the moment that node stopped
being primary, has ended (SIGTERM, *grace* seconds, SIGKILL: its default is
``grace + 1``). It is stopped the same way when the node stops being the
primary, and started again on a later promotion.

The role comes from the middleware's rules and machinery: a
:class:`~litefs_route._state_cache.StateCache` fed by LiteFS's event stream
(:mod:`litefs_route._subscriber`), the mount every *interval* where the stream
is down. Signals the supervisor gets are passed on to CMD; SIGTERM and
SIGINT also end the supervisor once CMD has ended. CMD ending by itself
ends the supervisor with its status, or (*restart*) starts it again while
the node is still the primary.

Each start and stop is logged once, with its reason, under ``litefs_route``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import select
import shlex
import signal
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from types import FrameType

from ._hooks import RoleWatcher, build_cache
from ._mount import NodeState

__all__ = ["EXIT_CANNOT_RUN", "Options", "Supervisor", "main"]

logger = logging.getLogger("litefs_route")

EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
# Passed on to CMD as they come; SIGTERM and SIGINT also end the supervisor.
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_ENDING = (signal.SIGTERM, signal.SIGINT)
# Seconds between restarts of a CMD that keeps ending by itself (--restart).
_RESTART_BACKOFF = 1.0


@dataclass(slots=True)
class Options:
    """What ``run --while-primary`` was asked to do."""

    cmd: list[str]
    litefs_dir: str | None
    instance_id: str
    api_url: str | None = None
    #: Seconds from SIGTERM to SIGKILL when CMD is stopped.
    grace: float = 10.0
    #: Seconds this node must have been primary before CMD starts (None: grace + 1).
    start_delay: float | None = None
    #: Start CMD again when it ends by itself (else the supervisor exits with its status).
    restart: bool = False
    #: Seconds between readings of the mount while LiteFS's event stream is down.
    interval: float = 0.5
    #: The lock file a running copy holds (None: one per command line, in the temporary directory).
    lock: str | None = None
    env: dict[str, str] | None = field(default=None, repr=False)

    @property
    def delay(self) -> float:
        return self.grace + 1.0 if self.start_delay is None else self.start_delay

    @property
    def lock_path(self) -> str:
        if self.lock is not None:
            return self.lock
        digest = hashlib.sha256(json.dumps(self.cmd).encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), f"litefs-route-run-{digest}.lock")


def _status(returncode: int) -> int:
    """A shell's exit status for a child's return code (a signal N is 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    """The loop behind ``run --while-primary`` (main thread only: it installs signal handlers)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.shown = shlex.join(options.cmd)
        self.cache = build_cache(options.litefs_dir, options.instance_id, options.interval, options.api_url)
        self._signals: deque[int] = deque()
        self._state: NodeState | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._primary_since: float | None = None
        self._stop_deadline: float | None = None  # SIGKILL at, while stopping
        self._killed = False
        self._lock_busy_logged = False
        self._restart_at = 0.0
        self._ending: int | None = None  # the signal that ends the supervisor
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    # -- wake-ups -------------------------------------------------------------

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe is awake already
            os.write(self._wake_w, b"\0")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)  # handled in the loop; set_wakeup_fd wakes it

    def _on_role(self, previous: NodeState | None, state: NodeState) -> None:
        self._state = state
        self._poke()

    # -- the loop -------------------------------------------------------------

    def run(self) -> int:
        handled = (*_FORWARDED, signal.SIGCHLD)
        old = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        old_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        watcher = RoleWatcher(self.cache, self._on_role, interval=self.options.interval).start()
        try:
            while True:
                code = self._step()
                if code is not None:
                    return code
                self._sleep()
        finally:
            watcher.stop()
            signal.set_wakeup_fd(old_fd)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self._kill_group()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _sleep(self) -> None:
        now = time.monotonic()
        deadlines = [d for d in (self._stop_deadline, self._start_at(), self._restart_pending()) if d is not None]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        with contextlib.suppress(InterruptedError):
            select.select([self._wake_r], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _start_at(self) -> float | None:
        if self._child is None and self._primary_since is not None:
            return self._primary_since + self.options.delay
        return None

    def _restart_pending(self) -> float | None:
        return self._restart_at if self._child is None and self._restart_at > time.monotonic() else None

    def _step(self) -> int | None:
        """One pass: signals, CMD's end, the role. Returns the exit status once the supervisor ends."""
        while self._signals:
            signum = self._signals.popleft()
            if signum == signal.SIGCHLD:
                continue
            if self._child is not None and self._child.returncode is None:
                name = signal.Signals(signum).name
                logger.info("passing %s on to %s (pid %d)", name, self.shown, self._child.pid)
                with contextlib.suppress(ProcessLookupError):
                    self._child.send_signal(signum)
                if signum in _ENDING and self._stop_deadline is None:
                    self._stop_deadline = time.monotonic() + self.options.grace
            if signum in _ENDING and self._ending is None:
                self._ending = signum
        code = self._reap()
        if code is not None:
            return code
        if self._ending is not None and self._child is None:
            return 0
        self._follow_role()
        self._escalate()
        return None

    def _reap(self) -> int | None:
        child = self._child
        if child is None or child.poll() is None:
            return None
        status = _status(child.returncode)
        self._kill_group()  # what CMD left behind: never a second copy next to a new one
        self._child = None
        stopped, self._stop_deadline, self._killed = self._stop_deadline is not None, None, False
        if self._ending is not None:
            logger.info("%s (pid %d) ended with status %d; exiting with it", self.shown, child.pid, status)
            return status
        if stopped:
            logger.info("%s (pid %d) stopped (status %d)", self.shown, child.pid, status)
            return None
        if self.options.restart:
            self._restart_at = time.monotonic() + _RESTART_BACKOFF
            logger.info(
                "%s (pid %d) ended by itself with status %d; starting it again in %g s while this node is primary",
                self.shown,
                child.pid,
                status,
                _RESTART_BACKOFF,
            )
            return None
        logger.info("%s (pid %d) ended by itself with status %d; exiting with it", self.shown, child.pid, status)
        return status

    def _follow_role(self) -> None:
        state = self._state
        if state is None or self._ending is not None:
            return
        now = time.monotonic()
        if not state.is_primary:
            self._primary_since = None
            child = self._child
            if child is not None and self._stop_deadline is None:
                logger.info(
                    "stopping %s (pid %d): this node is no longer the primary (%s, primary %s: %s); "
                    "SIGTERM, SIGKILL after %g s",
                    self.shown,
                    child.pid,
                    state.role,
                    state.primary_id or "unknown",
                    state.detail,
                    self.options.grace,
                )
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
                self._stop_deadline = now + self.options.grace
            return
        if self._primary_since is None:
            self._primary_since = now
            if self._child is None and self.options.delay > 0:
                logger.info(
                    "this node is the primary (%s); starting %s in %g s, once a previous primary's copy has stopped",
                    state.detail,
                    self.shown,
                    self.options.delay,
                )
        start_at = self._start_at()
        if start_at is not None and now >= start_at and now >= self._restart_at:
            self._start(state, now - self._primary_since)

    def _take_lock(self) -> int | None:
        """The lock that says a copy of CMD runs on this node (an fd), or None while another copy holds it."""
        fd = os.open(self.options.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not self._lock_busy_logged:
                self._lock_busy_logged = True
                logger.warning(
                    "not starting %s: another copy holds %s (another supervisor of it, or a copy left running "
                    "when its supervisor died); starting once it is released",
                    self.shown,
                    self.options.lock_path,
                )
            self._restart_at = time.monotonic() + self.options.interval  # try again then
            return None
        self._lock_busy_logged = False
        return fd

    def _start(self, state: NodeState, primary_for: float) -> None:
        lock = self._take_lock()
        if lock is None:
            return
        try:
            # Its own process group: stopping CMD stops what it started, and terminal signals reach it through us.
            # It inherits the lock: held while any process of this copy lives, even if this supervisor dies.
            child = subprocess.Popen(self.options.cmd, start_new_session=True, env=self.options.env, pass_fds=(lock,))
        except OSError as exc:
            code = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_CANNOT_RUN
            logger.error("cannot run %s: %s", self.shown, exc.strerror)
            raise SystemExit(code) from None
        finally:
            os.close(lock)  # the copy's fd holds it now
        self._child = child
        logger.info(
            "started %s (pid %d): this node is the primary (%s; primary for %.3f s)",
            self.shown,
            child.pid,
            state.detail,
            primary_for,
        )

    def _escalate(self) -> None:
        child, deadline = self._child, self._stop_deadline
        if child is None or deadline is None or self._killed or time.monotonic() < deadline:
            return
        logger.warning("%s (pid %d) still runs %g s after SIGTERM: SIGKILL", self.shown, child.pid, self.options.grace)
        self._killed = True
        self._kill_group()

    def _kill_group(self) -> None:
        child = self._child
        if child is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)


def main(
    cmd: list[str],
    *,
    litefs_dir: str | None,
    instance_id: str,
    api_url: str | None,
    grace: float,
    start_delay: float | None,
    restart: bool,
    interval: float,
    lock: str | None = None,
) -> int:
    """The ``run --while-primary`` command: supervise *cmd*; returns the exit status."""
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)  # one line per start and stop is the point of this command
    options = Options(
        cmd,
        litefs_dir,
        instance_id,
        api_url=api_url,
        grace=grace,
        start_delay=start_delay,
        restart=restart,
        interval=interval,
        lock=lock,
    )
    logger.info("supervising %s: it runs only while this node (%s) is the primary", shlex.join(cmd), instance_id)
    try:
        return Supervisor(options).run()
    except SystemExit as exc:
        return int(exc.code or 0)
