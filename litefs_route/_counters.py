"""What the middlewares of one process did: counters, readable from Python.

Every NodeRouting (so every middleware, or every group sharing one) has its
own :class:`Counters`, at ``middleware.routing.counters``::

    middleware.routing.counters.snapshot()
    # {"replays": 412, "read_replays": 3, "primary_waits": 2, "primary_wait_seconds": 1.7, ...}

:func:`routing_counters` sums every middleware of the process, for apps that
do not hold their middleware (Django builds its own)::

    from litefs_route import routing_counters
    def metrics(request):
        return JsonResponse(routing_counters())

Names (absent until the first count):

``replays``
    Requests answered ``409`` + ``fly-replay`` (writes on a replica,
    ``ensure_primary()``, ``ensure_instance()``, the safety net's replays).
``read_replays``
    Reads replayed to the primary because their TXID did not arrive within
    ``consistency_wait``.
``unavailable_no_primary``, ``unavailable_too_many_replays``, ``unavailable_ran_here``
    ``503`` answers, by reason: no primary known after ``primary_wait``; a
    request replayed ``max_replays`` times; a request that ran here and found
    no primary to end on (or whose write SQLite refused on the primary:
    ``SQLITE_BUSY``).
``too_large``, ``body_timeouts``
    ``413`` and ``408`` answers.
``unavailable_replay_failed``
    ``503`` answers to requests Fly's proxy sent back (``fly-replay-failed``).
``unavailable_misconfigured``
    ``503`` answers to writes while the configured mount directory
    (``litefs_dir``, ``$LITEFS_DIR``) does not exist: refused at once.
``bad_requests``
    ``400`` answers: requests with both ``Content-Length`` and
    ``Transfer-Encoding`` (refused before anything runs, RFC 9112 §6.3).
``forwards``, ``forward_failures``, ``forbidden_forwards``
    Writes forward mode sent to the primary; those whose connection failed
    (a ``503`` or ``502``); requests refused ``403`` for claiming to be
    forwarded without the secret.
``primary_waits``, ``primary_wait_seconds``
    Requests that waited for a primary, and the seconds they waited in all.
``consistency_waits``
    Reads that waited for their TXID (read-your-writes).
``safety_net``
    Writes SQLite failed because of LiteFS (a replica, or a primary whose
    LiteFS stopped) that the middleware ended in its own reply.
``outcome_unknown``
    ``502`` answers with ``Litefs-Route-Outcome: unknown``: a write that may
    have run (SQLite's I/O error on a node whose LiteFS was stopping or had
    stopped). Forward mode's ``502`` (counted in ``forward_failures``)
    carries the same header.
``health_checks_passed``, ``health_checks_failed``
    Answers of the health check (``health_path``).

Per process: with several workers, each counts its own. Each count is also
logged at ``DEBUG`` by the ``litefs_route`` logger (``counted replays``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable

from ._log_fields import log_fields

__all__ = ["TIMINGS", "CountListener", "Counters", "add_count_listener", "remove_count_listener", "routing_counters"]

#: ``listener(name, amount, cause)``: see :func:`add_count_listener`.
CountListener = Callable[[str, float, "str | None"], None]


logger = logging.getLogger("litefs_route")


class Counters:
    """Thread-safe counters of one routing (see the module's documentation for the names)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, float] = {}
        with _listeners_lock:
            #: True while a listener is added: without one, callers skip :meth:`observe` (it runs on every request).
            self.listened = bool(_listeners)
            _EVERY.add(self)

    def add(self, name: str, amount: float = 1, *, cause: str | None = None) -> None:
        """Count *amount* more of *name* (*cause*: what asked for a replay, for the listeners)."""
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + amount
        for listener in _listeners:
            listener(name, amount, cause)
        if logger.isEnabledFor(logging.DEBUG):  # cached by logging: no record built when off
            logger.debug(
                "counted %s (+%g)",
                name,
                amount,
                extra=log_fields(event="counted", counter=name, amount=amount, cause=cause),
            )

    def observe(self, name: str, detail: str | None = None) -> None:
        """Tell the listeners (metrics) of one *name*, without counting it here (``ran``: every request would)."""
        for listener in _listeners:
            listener(name, 1, detail)

    def time(self, name: str, seconds: float, outcome: str | None = None) -> None:
        """Tell the listeners how long one *name* took, for their histograms (not counted here; see TIMINGS)."""
        for listener in _listeners:
            listener(name, seconds, outcome)

    def snapshot(self) -> dict[str, float]:
        """The counts so far (a copy)."""
        with self._lock:
            return dict(self._counts)

    def __repr__(self) -> str:
        return f"Counters({self.snapshot()!r})"


#: The durations :meth:`Counters.time` tells the listeners (seconds, with their outcome):
#: ``primary_wait`` (``found``, ``timed_out``): one request's whole wait for a primary;
#: ``txid_wait`` (``arrived``, ``timed_out``): one read's wait for its TXIDs (read-your-writes);
#: ``replay_latency`` (None): from the replaying instance's answer to the replayed request's arrival here.
TIMINGS = ("primary_wait", "txid_wait", "replay_latency")


# Every NodeRouting's counters in this process, for routing_counters(); gone with their routing.
_EVERY: weakref.WeakSet[Counters] = weakref.WeakSet()
# Replaced, never changed in place: counting threads iterate it without a lock. Empty: metrics off.
_listeners: tuple[CountListener, ...] = ()
_listeners_lock = threading.Lock()


def add_count_listener(listener: CountListener) -> None:
    """Call ``listener(name, amount, cause)`` on each count of every routing of this process.

    For metrics exporters (:mod:`litefs_route.prometheus`). *name* is a
    counter's (the module's documentation), or ``ran``: a request whose app
    ran and whose answer stood (told only to listeners), ``replay_target``
    (*cause*: the instance a request was replayed to), or one of
    :data:`TIMINGS` (*amount*: seconds, *cause*: its outcome). *cause*, on
    ``replays``: ``write``, ``ensure_primary``, ``ensure_instance`` or
    ``safety_net``; else None. Called in the request's thread or task, after
    the count: it must be quick, must not block and must not raise.
    """
    global _listeners
    with _listeners_lock:
        if listener not in _listeners:
            _listeners = (*_listeners, listener)
        _set_listened()


def remove_count_listener(listener: CountListener) -> None:
    """Stop calling *listener* (added by :func:`add_count_listener`)."""
    global _listeners
    with _listeners_lock:
        _listeners = tuple(each for each in _listeners if each != listener)
        _set_listened()


def _set_listened() -> None:
    for counters in list(_EVERY):
        counters.listened = bool(_listeners)


def routing_counters() -> dict[str, float]:
    """The counts of every middleware in this process, summed (see the module's documentation for the names)."""
    total: dict[str, float] = {}
    for counters in list(_EVERY):
        for name, count in counters.snapshot().items():
            total[name] = total.get(name, 0) + count
    return total
