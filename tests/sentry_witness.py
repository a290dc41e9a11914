"""Sentry as apps run it, with transports that keep what it would send.

``RecordingTransport`` keeps the events of this process in memory
(``recorded_events()``); ``FileTransport`` appends each event as a JSON line
to ``$SENTRY_EVENTS_FILE``, for servers in their own process (Django under
gunicorn and uvicorn). Only error events count: sessions and client reports
are not reports of an error.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

#: A DSN nothing listens on: the transports below never send anything.
DSN = "http://public@127.0.0.1/1"

_lock = threading.Lock()
_events: list[dict[str, Any]] = []


class RecordingTransport(Transport):
    """Keeps each error event in this process's memory."""

    def capture_envelope(self, envelope: Envelope) -> None:
        event = envelope.get_event()
        if event is not None:
            with _lock:
                _events.append(dict(event))


class FileTransport(Transport):
    """Appends each error event to ``$SENTRY_EVENTS_FILE`` as one JSON line (written before the response)."""

    def capture_envelope(self, envelope: Envelope) -> None:
        event = envelope.get_event()
        if event is not None:
            with _lock, open(os.environ["SENTRY_EVENTS_FILE"], "a") as out:
                out.write(json.dumps(event, default=str) + "\n")


def recorded_events() -> list[dict[str, Any]]:
    with _lock:
        return list(_events)


def clear_recorded_events() -> None:
    with _lock:
        _events.clear()


def read_events_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def exception_types(events: list[dict[str, Any]]) -> list[str]:
    """What each event reports: its exception's type, or its log message for a logged error."""
    described = []
    for event in events:
        values = (event.get("exception") or {}).get("values") or []
        if values:
            described.append(str(values[-1].get("type")))
        else:
            described.append(f"log: {(event.get('logentry') or {}).get('message') or event.get('message')}")
    return described


def stop_sentry() -> None:
    """Back to no Sentry in this process: its patches stay, but find no active integration."""
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)
