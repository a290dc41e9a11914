"""Celery worker and beat, each under ``litefs-route run --while-primary``.

On the LiteFS primary's Machine (the worker's tasks write to SQLite; beat
must run once per cluster)::

    litefs-route run --while-primary -- celery -A examples.background.celery_app worker --pool=solo
    litefs-route run --while-primary -- celery -A examples.background.celery_app beat -s /tmp/celerybeat-schedule

A promotion elsewhere stops both here (SIGTERM: Celery's warm shutdown,
``--grace`` seconds to finish the task at hand, then SIGKILL) and starts
them there. Tasks queued meanwhile wait in Redis. A task interrupted by
SIGKILL may have written: make tasks idempotent, or run their writes
through ``call_on_primary`` (exactly once).

On worker Machines that are never primary (fly.toml's ``worker`` group),
run the worker without the supervisor; its tasks write through
``call_on_primary`` (``tick_on_primary``, served by ``web_tasks.py``).
"""

from __future__ import annotations

import os

from celery import Celery

from examples.background import jobs
from litefs_route import call_on_primary

app = Celery("background", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.broker_connection_retry_on_startup = True
app.conf.beat_schedule = {
    "tick": {"task": "examples.background.celery_app.tick", "schedule": float(os.environ.get("TICK_EVERY", "60"))}
}


@app.task
def tick() -> int:
    return jobs.record("celery")


@app.task
def tick_on_primary() -> int:
    """For a worker Machine that is never primary: the write runs on the primary, exactly once."""
    return int(call_on_primary("tick")["id"])
