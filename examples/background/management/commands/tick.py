"""``python -m django tick [--every S]``: a Django management command that writes a tick, once or in a loop.

    DJANGO_SETTINGS_MODULE=examples.background.django_settings \\
        litefs-route run --while-primary -- python -m django tick --every 60

Run once from cron on every Machine instead: ``litefs-route exec --if-primary -- python -m django tick``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection


class Command(BaseCommand):
    help = "Write one row into ticks (with --every: every S seconds until SIGTERM)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--every", type=float, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())  # finish the tick at hand, then exit
        while True:
            with connection.cursor() as cursor:
                cursor.execute(
                    "CREATE TABLE IF NOT EXISTS ticks (id INTEGER PRIMARY KEY, source TEXT, node TEXT, at REAL)"
                )
                cursor.execute(
                    "INSERT INTO ticks (source, node, at) VALUES (%s, %s, %s)",
                    ["django", os.environ.get("FLY_MACHINE_ID", "local"), time.time()],
                )
            if options["every"] is None or stop.wait(options["every"]):
                return
