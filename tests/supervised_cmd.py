"""A command for ``run --while-primary`` tests: it records its life in a file, one line per event.

``python -m tests.supervised_cmd RECORD NAME [--ignore-term] [--exit-after S] [--exit-code N]``

Lines: ``start|term|usr1|exit NAME PID WALLCLOCK`` (``term``: SIGTERM arrived;
``exit``: about to exit), so the record shows when each copy ran.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from types import FrameType


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("record")
    parser.add_argument("name")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--exit-code", type=int, default=0)
    args = parser.parse_args()
    done = threading.Event()

    def note(event: str) -> None:
        # One write per line, O_APPEND: lines from several processes never interleave.
        fd = os.open(args.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {args.name} {os.getpid()} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)

    def on_term(signum: int, frame: FrameType | None) -> None:
        note("term")
        if not args.ignore_term:
            done.set()

    def on_usr1(signum: int, frame: FrameType | None) -> None:
        note("usr1")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    note("start")
    done.wait(args.exit_after)
    note("exit")
    code: int = args.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())
