"""APScheduler in the web process: every instance schedules, only the primary's run writes.

``@primary_only`` skips the job on a replica (logged at DEBUG, counted in
``primary_only_skips()``); a promotion needs no restart. Run alone with
``python -m examples.background.apscheduler_app`` (blocks), or call
:func:`start` from your app's start-up.
"""

from __future__ import annotations

import logging
import os

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from examples.background import jobs
from litefs_route import primary_only

EVERY = float(os.environ.get("TICK_EVERY", "60"))


@primary_only
def tick() -> int:
    return jobs.record("apscheduler")


def start() -> BackgroundScheduler:
    """Start the scheduler in a thread of this process (call once per process, after a pre-fork server forks)."""
    scheduler = BackgroundScheduler()
    scheduler.add_job(tick, "interval", seconds=EVERY)
    scheduler.start()
    return scheduler


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("litefs_route").setLevel(logging.DEBUG)  # shows each skip
    blocking = BlockingScheduler()
    blocking.add_job(tick, "interval", seconds=EVERY)
    blocking.start()
