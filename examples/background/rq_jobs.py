"""An RQ worker under ``litefs-route run --while-primary``.

Any instance enqueues (Redis, no SQLite write): ``Queue("background",
connection=Redis.from_url(url)).enqueue(tick)``. Only the primary works the
queue::

    litefs-route run --while-primary -- rq worker --url "$REDIS_URL" background
"""

from __future__ import annotations

from examples.background import jobs


def tick() -> int:
    return jobs.record("rq")
