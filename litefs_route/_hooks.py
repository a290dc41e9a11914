"""In-process hooks for background work: is this node the primary, and tell me when that changes.

Everything here reads the same :class:`~litefs_route._state_cache.StateCache`
the middleware routes on, fed by the same event subscriber
(:mod:`litefs_route._subscriber`): a push from LiteFS's event stream where it
is up, the mount every ``cache_ttl`` where it is not. A process that serves
requests uses its middleware's cache; a process without one (a worker, a
scheduler) gets its own, built from ``$LITEFS_DIR`` the way the middleware
builds it. No rule is repeated here.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast, overload

from ._log_fields import log_fields
from ._mount import NodeState, default_instance_id
from ._postgres_source import region_state_from_env, regions_from_env
from ._routing import every_routing
from ._state_cache import StateCache
from ._subscriber import resolve_api_url, subscriber_for

__all__ = [
    "RoleWatcher",
    "is_primary",
    "node_cache",
    "on_become_primary",
    "on_stop_primary",
    "primary_only",
]

logger = logging.getLogger("litefs_route")

P = ParamSpec("P")
R = TypeVar("R")

# Seconds a reading of the mount is reused while the event stream is down (the middleware's default).
_DEFAULT_TTL = 1.0

_own_caches: dict[tuple[str | None, str, tuple[str, str] | None], StateCache] = {}
_own_cache_lock = threading.Lock()


def build_cache(litefs_dir: str | None, instance_id: str, ttl: float, api_url: str | None) -> StateCache:
    """A cache of the mount, fed by the process's subscriber (as the middleware builds its own).

    Without a mount, but with ``$PRIMARY_REGION`` and ``$FLY_REGION``: the
    node's state by region (Postgres), as :class:`~litefs_route.PostgresSource`
    routes, without reading a database.
    """
    by_region = None if litefs_dir else region_state_from_env(instance_id)
    if by_region is not None:  # no database is read: the state never changes
        return StateCache(
            by_region.detail, instance_id, _DEFAULT_TTL, reader=lambda _where, _id: by_region, flickers=False
        )
    cache = StateCache(litefs_dir, instance_id, ttl)
    url = resolve_api_url(api_url)
    if url is not None and litefs_dir:
        subscriber_for(url, litefs_dir).attach(cache)
    return cache


def node_cache() -> StateCache:
    """The reading the process routes on: a middleware's, else one of our own.

    A middleware's on ``$LITEFS_DIR``; without one, any middleware's (a
    Postgres source's, say). A process without a middleware reads
    ``$LITEFS_DIR``; without one, but with ``$PRIMARY_REGION`` and
    ``$FLY_REGION``, it is the primary in the primary region (Postgres), as
    :class:`~litefs_route.PostgresSource` routes.
    """
    mount, instance_id = os.environ.get("LITEFS_DIR") or None, default_instance_id()
    for routing in every_routing():  # oldest first
        if (routing.cache.litefs_dir == mount or mount is None) and routing.instance_id == instance_id:
            return routing.cache
    key = (mount, instance_id, None if mount else regions_from_env())
    with _own_cache_lock:
        cache = _own_caches.get(key)
        if cache is None:
            cache = _own_caches[key] = build_cache(mount, instance_id, _DEFAULT_TTL, None)
        return cache


def is_primary() -> bool:
    """True if writes may run on this node now (the primary, or standalone without a mount).

    No I/O while the event stream is up; otherwise at most one read of the
    mount per ``cache_ttl`` per process (blocking: in async code, the read is short but
    it is a FUSE round trip; the stream makes it free).
    """
    return node_cache().get().is_primary


class _SkipCounter:
    """How many calls :func:`primary_only` skipped, in all and per function."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_name: dict[str, int] = {}

    def add(self, name: str) -> None:
        with self._lock:
            self.by_name[name] = self.by_name.get(name, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_name.values())


#: Calls skipped by :func:`primary_only` on a node that was not the primary.
skipped_calls = _SkipCounter()


@overload
def primary_only(func: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R | None]]: ...
@overload
def primary_only(func: Callable[P, R]) -> Callable[P, R | None]: ...
def primary_only(func: Callable[P, Any]) -> Callable[P, Any]:
    """Run *func* only on the primary; elsewhere the call returns None (logged at DEBUG, counted).

    For scheduled jobs that every node schedules (APScheduler in each web
    process, a cron line on every Machine): only the primary's run writes.
    Works on coroutine functions too. Counted: :func:`primary_only_skips`.
    """
    name = getattr(func, "__qualname__", repr(func))

    def skip() -> None:
        skipped_calls.add(name)
        logger.debug(
            "%s skipped: this node is not the primary",
            name,
            extra=log_fields(event="primary_only_skipped", callback=name),
        )

    if inspect.iscoroutinefunction(func):
        async_func = cast("Callable[P, Awaitable[Any]]", func)

        @functools.wraps(func)
        async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
            if not is_primary():
                skip()
                return None
            return await async_func(*args, **kwargs)

        return run_async

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> Any:
        if not is_primary():
            skip()
            return None
        return func(*args, **kwargs)

    return run


def primary_only_skips() -> dict[str, int]:
    """How many calls :func:`primary_only` skipped in this process, by function."""
    return dict(skipped_calls.by_name)


class RoleWatcher:
    """A daemon thread that calls *on_change(previous, state)* each time the node's role or primary changes.

    Woken by the event stream's pushes; while the stream is down it reads
    the mount every *interval* seconds (through the cache: at most once per
    its TTL). The first call comes with ``previous=None``.
    """

    def __init__(
        self,
        cache: StateCache,
        on_change: Callable[[NodeState | None, NodeState], None],
        *,
        interval: float = _DEFAULT_TTL,
        name: str = "litefs-route role watcher",
    ) -> None:
        self.cache = cache
        self.on_change = on_change
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> RoleWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last: NodeState | None = None
        while not self._stop.is_set():
            state = self.cache.get(self.interval)
            if last is None or (last.role, last.primary_id) != (state.role, state.primary_id):
                previous, last = last, state
                try:
                    self.on_change(previous, state)
                except Exception:  # a callback's bug must not end the watch
                    logger.exception(
                        "a LiteFS role-change callback failed",
                        extra=log_fields(event="role_callback_failed", role=state.role.value, primary=state.primary_id),
                    )
            # Pushed: woken by the next push (or after interval, to notice a stream that dropped).
            if not self.cache.wait_for_change(state, self.interval):
                self._stop.wait(self.interval)


_callbacks_lock = threading.Lock()
_become: list[Callable[[], None]] = []
_stop_being: list[Callable[[], None]] = []
_watcher: RoleWatcher | None = None


def _dispatch(previous: NodeState | None, state: NodeState) -> None:
    was = previous is not None and previous.is_primary
    if state.is_primary == was:
        return
    with _callbacks_lock:
        callbacks = list(_become if state.is_primary else _stop_being)
    for callback in callbacks:
        try:
            callback()
        except Exception:
            name = getattr(callback, "__qualname__", repr(callback))
            logger.exception(
                "%s failed", name, extra=log_fields(event="role_callback_failed", callback=name, role=state.role.value)
            )


def _ensure_watching() -> None:
    global _watcher
    if _watcher is None:
        _watcher = RoleWatcher(node_cache(), _dispatch, name="litefs-route role callbacks").start()


def on_become_primary(callback: Callable[[], None]) -> Callable[[], None]:
    """Call *callback* (in a background thread) when this node becomes the primary; usable as a decorator.

    Also called at once if the node is the primary when the watch starts
    (the first callback registered starts it). Keep it short: callbacks run
    one after another on the watcher's thread.
    """
    with _callbacks_lock:
        _become.append(callback)
        _ensure_watching()
    return callback


def on_stop_primary(callback: Callable[[], None]) -> Callable[[], None]:
    """Call *callback* (in a background thread) when this node stops being the primary; usable as a decorator."""
    with _callbacks_lock:
        _stop_being.append(callback)
        _ensure_watching()
    return callback


def _after_fork_in_child() -> None:
    # The watcher thread does not survive a fork: register callbacks in the process that
    # serves (after a pre-fork server's fork); the next registration starts a watcher.
    global _watcher, _callbacks_lock, _own_cache_lock
    _watcher = None
    _callbacks_lock, _own_cache_lock = threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
