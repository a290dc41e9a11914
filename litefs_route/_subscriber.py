"""Push, not poll: one thread per process follows LiteFS's event stream.

While the stream (``GET /events`` on LiteFS's HTTP API, :mod:`litefs_route._events`)
is up, the node's role, the primary and each database's TXID are *pushed*
into the middleware's :class:`~litefs_route._state_cache.StateCache` and
:class:`~litefs_route._consistency.PositionWatcher` the moment LiteFS
publishes them: routing decisions are never stale, read-your-writes waiters
are woken by ``tx`` events, and neither a read nor an idle process touches
the mount.

The stream is an optimisation, never a dependency. When the API is
unreachable, refuses, or the stream drops (LiteFS stopped, or closed this
subscriber because it fell 1,024 events behind), the cache and the watchers
fall back at once to reading the mount (every ``cache_ttl``; ``<db>-pos``
every millisecond while someone waits) and the thread reconnects with
backoff. The stream is checked against the mount, so that an API that is
not this mount's LiteFS, or a stream that stalled, does not drive routing:

- on every (re)connection, LiteFS's ``init`` event must agree with
  ``.primary`` and ``.lag``, and each database's ``-pos`` is read once
  (``tx`` events are not replayed);
- at most once a second per database, a ``tx`` event must not be ahead of
  the mount's ``-pos`` (LiteFS updates it before it publishes the event;
  this tells two replicas of one primary apart, which ``init`` cannot);
  ahead once, it is held back and the next one checked; twice, dropped;
- after 5 s of silence, the API must still say what the stream last said:
  the primary in ``/info``, each watched database's TXID in ``/metrics``
  (twice in a row not, or no answer: the stream stalled).

Any failed check drops the stream, as an error would. The thread is a
daemon, started by the first read of the mount in the process that serves
(so a ``gunicorn --preload`` master starts none, and each forked worker its
own), and it ends once every middleware it fed is gone. Requests never wait
on it.

Logged under ``litefs_route``: INFO when the stream comes up and when it
recovers, WARNING once when it drops or is not this mount's LiteFS, INFO
once when it cannot be reached at all (LiteFS without an API, or the
imitation cluster). The state it holds is one connection and one thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ._consistency import PositionWatcher
from ._events import (
    Init,
    LiteFSEvent,
    PrimaryChange,
    Quiet,
    Tx,
    node_state,
    read_candidate,
    read_events,
    read_info,
    read_txids,
)
from ._log_fields import log_fields
from ._mount import read_node_state, read_position
from ._state_cache import StateCache

__all__ = ["DEFAULT_API_URL", "EventSubscriber", "resolve_api_url", "subscriber_for"]

logger = logging.getLogger("litefs_route")

#: LiteFS's API address when ``litefs.yml`` does not set ``http.addr``.
DEFAULT_API_URL = "http://127.0.0.1:20202"
#: What turns the stream off (the option, ``$LITEFS_API_URL``, ``--api-url``).
OFF = "off"

# Seconds to wait before reconnecting: doubled after each failure, up to the
# maximum; back to the minimum once a stream stayed up for _STABLE seconds.
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 10.0
_STABLE = 30.0
# Seconds to connect and get the response's head (a local socket).
_CONNECT_TIMEOUT = 2.0
# Seconds of silence after which LiteFS's /info is asked whether the stream
# still tells the truth (LiteFS sends nothing while nothing happens, and a
# stalled stream looks the same).
_QUIET_AFTER = 5.0
# Seconds between two checks of a database's tx events against its -pos.
_SPOT_CHECK_EVERY = 1.0


def resolve_api_url(option: str | None) -> str | None:
    """The API URL to follow: the option, else ``$LITEFS_API_URL``, else LiteFS's default; None for "off"."""
    url = option or os.environ.get("LITEFS_API_URL") or DEFAULT_API_URL
    return None if url == OFF else url


class _Abandoned(ConnectionError):
    """Nothing is attached any more: the thread ends."""


class StreamMismatch(ConnectionError):
    """The API's view disagrees with the mount: it is not this mount's LiteFS, or things moved meanwhile."""


@dataclass(frozen=True, slots=True)
class _Key:
    api_url: str
    litefs_dir: str


class EventSubscriber:
    """The event stream of one LiteFS API, feeding every cache and watcher of one mount in this process.

    Build it through :func:`subscriber_for` (one per API and mount per process).
    """

    def __init__(
        self,
        api_url: str,
        litefs_dir: str,
        *,
        connect_timeout: float = _CONNECT_TIMEOUT,
        quiet_after: float = _QUIET_AFTER,
    ) -> None:
        self.api_url = api_url
        self.litefs_dir = litefs_dir
        self.connect_timeout = connect_timeout
        self.quiet_after = quiet_after
        # Consecutive quiet checks whose /info disagreed with the last pushed state.
        self._disagreements = 0
        # When each database's -pos was last compared with a tx event, and
        # the databases whose last tx event was ahead of it.
        self._checked_at: dict[str, float] = {}
        self._suspects: set[str] = set()
        self._caches: weakref.WeakSet[StateCache] = weakref.WeakSet()
        self._watchers: weakref.WeakSet[PositionWatcher] = weakref.WeakSet()
        self._lock = threading.Lock()  # starting the thread
        # Applying what the stream says, and attaching: one at a time, so a
        # cache or watcher attached while the stream is up misses nothing.
        self._feed_lock = threading.Lock()
        self._last_state: Init | PrimaryChange | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        #: True while the stream is up and trusted (its state is pushed).
        self.up = False
        #: Connections this process made that came up and were trusted; the tests and benchmarks read it.
        self.connections = 0
        #: Reads of the mount by the thread itself (checks of the stream against it); the benchmarks report it.
        self.reads = 0
        #: Whether this node is a lease candidate, as its LiteFS said when the stream last came up; None if unknown.
        self.candidate: bool | None = None
        # Logged once per transition, not once per retry.
        self._ever_up = False
        self._reported_unreachable = False
        self._reported_mismatch = False

    def attach(self, cache: StateCache, watchers: Iterable[PositionWatcher] = ()) -> None:
        """Feed *cache* (and the TXID *watchers*) from the stream; the thread starts at the cache's next read.

        Attached while the stream is up, they are brought up to date first
        (the watchers read their ``-pos`` once, blocking briefly).
        """
        watchers = list(watchers)
        with self._feed_lock:
            self._caches.add(cache)
            self._watchers.update(watchers)
            if self.up and self._last_state is not None:
                cache.push(node_state(self._last_state, cache.instance_id))
                self._catch_up(watchers)
        cache.before_read = self.ensure_running

    def ensure_running(self) -> None:
        """Start the thread in this process if it is not running (cheap when it is)."""
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread.is_alive():
            return
        with self._lock:
            thread = self._thread
            if thread is not None and self._pid == os.getpid() and thread.is_alive():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="litefs-route event stream", daemon=True)
            self._thread.start()

    def forked(self) -> None:
        """In a forked child: the parent's thread is gone, and what it pushed is no longer kept current.

        Back to the mount until this process's own thread (started by the
        next read) is up. Runs in the child right after the fork, where a lock
        another thread held is held for ever: nothing here waits on one.
        """
        self._lock, self._feed_lock = threading.Lock(), threading.Lock()
        self._thread, self.up, self.connections = None, False, 0
        for cache in list(self._caches):
            cache.forked()
        for watcher in list(self._watchers):
            watcher.forked()

    # -- the thread ---------------------------------------------------------

    def _run(self) -> None:
        backoff = _BACKOFF_MIN
        while self._caches:  # ends once every middleware it fed is gone
            began = time.monotonic()
            events = read_events(
                self.api_url, timeout=None, connect_timeout=self.connect_timeout, quiet_after=self.quiet_after
            )
            try:
                self._follow(events)
            except (OSError, ValueError) as exc:
                self._fall_back(exc)
            except Exception as exc:  # a bug must not end the thread with the stream's state trusted
                logger.exception(
                    "the LiteFS event stream's thread failed; reading the mount, retrying",
                    extra=log_fields(event="event_stream_failed", api_url=self.api_url, reason=repr(exc)),
                )
                self._fall_back(exc)
            finally:
                events.close()  # its socket, now rather than after the backoff
            if time.monotonic() - began > _STABLE:
                backoff = _BACKOFF_MIN
            time.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
        _forget(self)

    def _follow(self, events: Iterator[LiteFSEvent | Quiet]) -> None:
        """Trust the stream once it agrees with the mount, then apply its events until it ends."""
        for event in events:
            if not self._caches:
                raise _Abandoned("every middleware this stream fed is gone")
            if isinstance(event, Quiet):
                self._check_quiet()
                continue
            with self._feed_lock:
                self._apply(event)
        raise ConnectionError("the event stream ended")  # read_events raises first; kept for safety

    def _apply(self, event: LiteFSEvent) -> None:
        self._disagreements = 0  # the stream moves: whatever a quiet check saw is not a stall
        if isinstance(event, Init):
            self._come_up(event)
        elif not self.up:
            return  # before init: nothing is trusted yet (LiteFS always sends init first)
        elif isinstance(event, PrimaryChange):
            self._push_state(event)
        elif isinstance(event, Tx):
            watchers = [w for w in list(self._watchers) if w.database == event.database]
            if watchers and not self._spot_check(event):
                return  # not applied: checked again at the next tx
            for watcher in watchers:
                watcher.advance(event.txid)

    def _come_up(self, init: Init) -> None:
        # Every change after this connection's subscription arrives as an
        # event; the mount, read now, shows everything before it.
        for cache in list(self._caches):
            on_stream = node_state(init, cache.instance_id)
            on_mount = read_node_state(self.litefs_dir, cache.instance_id)
            self.reads += 1
            if (on_stream.role, on_stream.primary_id) != (on_mount.role, on_mount.primary_id):
                raise StreamMismatch(
                    f"LiteFS's API says {on_stream.role} (primary {on_stream.primary_id}) but the mount "
                    f"{self.litefs_dir} says {on_mount.role} (primary {on_mount.primary_id})"
                )
        self._disagreements = 0
        self._suspects.clear()
        self._push_state(init)
        self._catch_up(list(self._watchers))
        with contextlib.suppress(OSError):  # a fixed setting: asked once per connection, for get_instance_info()
            self.candidate = read_candidate(self.api_url, timeout=self.connect_timeout)
        was_up_before, self.up, self._ever_up = self._ever_up, True, True
        self.connections += 1
        logger.info(
            "LiteFS's event stream (%s) is %s: routing follows it, the mount %s is no longer polled",
            self.api_url,
            "back up" if was_up_before else "up",
            self.litefs_dir,
            extra=log_fields(event="event_stream_up", api_url=self.api_url),
        )

    def _spot_check(self, tx: Tx) -> bool:
        """At most once a second per database: this mount must hold the transaction the event announces.

        LiteFS updates ``-pos`` before it publishes the event, so on its own
        mount ``-pos`` is never behind it. Ahead of the mount, the event is
        another node's: its TXIDs would let reads run before their write is
        here. (The ``init`` check cannot tell two replicas of one primary
        apart.) Once, it may be this node's after all: TXIDs go backwards after
        a failover that lost writes, and this reader may be behind. So the
        event is not applied (False) and the next one is checked too; ahead
        twice in a row, the stream is dropped.
        """
        suspect = tx.database in self._suspects
        now = time.monotonic()
        if not suspect and now - self._checked_at.get(tx.database, -math.inf) < _SPOT_CHECK_EVERY:
            return True
        self._checked_at[tx.database] = now
        self.reads += 1
        try:
            position = read_position(self.litefs_dir, tx.database)
        except OSError:
            return True  # a dead mount: the stream ends with it
        if position is None or position.txid >= tx.txid:
            self._suspects.discard(tx.database)
            return True
        if suspect:
            raise StreamMismatch(
                f"LiteFS's API announced TXID {tx.txid} of {tx.database} but the mount {self.litefs_dir} is at "
                f"{position.txid}: it is not this mount's LiteFS"
            )
        self._suspects.add(tx.database)
        return False

    def _check_quiet(self) -> None:
        """A quiet stream: LiteFS's API must still say what the stream last said (no mount read).

        ``/info``'s primary, and each watched database's TXID in
        ``/metrics``. Twice in a row not (an event may be on its way the first
        time): the stream stalled, and is dropped. No answer drops it too.
        """
        last = self._last_state
        if not self.up or last is None:
            return
        stale: list[str] = []
        now = read_info(self.api_url, timeout=self.connect_timeout)
        said = (last.is_primary, None if last.is_primary else last.primary)
        if now is not None and (now.is_primary, now.primary) != said:  # None: an older LiteFS's /info
            stale.append(f"/info says primary {now.primary or '-'} (is primary: {now.is_primary})")
        watchers = list(self._watchers)
        if watchers:
            txids = read_txids(self.api_url, timeout=self.connect_timeout)
            stale += [
                f"{w.database} is at TXID {txids[w.database]}, the stream said {w.last_known}"
                for w in watchers
                if w.database in txids and txids[w.database] != w.last_known
            ]
        if not stale:
            self._disagreements = 0
            return
        self._disagreements += 1
        if self._disagreements >= 2:
            self._disagreements = 0
            raise StreamMismatch(f"the event stream stalled: {'; '.join(stale)}")

    def _push_state(self, event: Init | PrimaryChange) -> None:
        self._last_state = event
        for cache in list(self._caches):
            cache.push(node_state(event, cache.instance_id))

    @staticmethod
    def _catch_up(watchers: list[PositionWatcher]) -> None:
        # tx events are not replayed: what came before the subscription is in -pos.
        for watcher in watchers:
            txid = watcher.read()
            if txid is not None:
                watcher.advance(txid)
            watcher.stream_up()

    def _fall_back(self, exc: BaseException) -> None:
        with self._feed_lock:
            was_up, self.up = self.up, False
            if was_up:  # only what was pushed expires: a failed retry leaves the mount's readings alone
                for cache in list(self._caches):
                    cache.stream_down()
                for watcher in list(self._watchers):
                    watcher.stream_down()
        if isinstance(exc, _Abandoned):
            return
        if was_up:
            logger.warning(
                "LiteFS's event stream (%s) dropped (%s): reading the mount until it is back",
                self.api_url,
                exc,
                extra=log_fields(event="event_stream_down", api_url=self.api_url, reason=str(exc)),
            )
        elif isinstance(exc, StreamMismatch):
            # Once: a misconfiguration repeats on every retry (a failover racing the connection does not).
            level = logging.DEBUG if self._reported_mismatch else logging.WARNING
            self._reported_mismatch = True
            logger.log(
                level,
                "not following LiteFS's event stream (%s): %s",
                self.api_url,
                exc,
                extra=log_fields(event="event_stream_mismatch", api_url=self.api_url, reason=str(exc)),
            )
        elif not self._reported_unreachable:
            self._reported_unreachable = True
            logger.info(
                "LiteFS's event stream (%s) is not reachable (%s): reading the mount; retrying in the background",
                self.api_url,
                exc,
                extra=log_fields(event="event_stream_unreachable", api_url=self.api_url, reason=str(exc)),
            )


_subscribers: dict[_Key, EventSubscriber] = {}
_subscribers_lock = threading.Lock()


def subscriber_for(api_url: str, litefs_dir: str) -> EventSubscriber:
    """The process's one subscriber to *api_url* for the mount *litefs_dir*."""
    key = _Key(api_url, litefs_dir)
    with _subscribers_lock:
        subscriber = _subscribers.get(key)
        if subscriber is None:
            subscriber = _subscribers[key] = EventSubscriber(api_url, litefs_dir)
        return subscriber


def _forget(subscriber: EventSubscriber) -> None:
    """Drop *subscriber* from the registry (its thread ended): a new middleware gets a new one."""
    key = _Key(subscriber.api_url, subscriber.litefs_dir)
    with _subscribers_lock:
        if _subscribers.get(key) is subscriber:
            del _subscribers[key]


def _after_fork_in_child() -> None:
    global _subscribers_lock  # a lock another thread held at the fork stays held for ever
    _subscribers_lock = threading.Lock()
    for subscriber in _subscribers.values():
        subscriber.forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
