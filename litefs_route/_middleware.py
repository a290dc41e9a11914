"""What the WSGI and ASGI middlewares share: their options and the routing they build.

The options are defined here once, as the keyword parameters of
:class:`RoutingMiddleware`, and documented on it; both
``PrimaryRoutingMiddleware`` classes inherit them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import textwrap
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from ._consistency import TxidCookies
from ._forwarding import DEFAULT_FORWARD_URL, SECRET_ENV, ForwardURL, resolve_forward_url
from ._globs import PathGlobs
from ._log_fields import log_fields
from ._mount import default_instance_id, is_valid_instance_id, missing_mount
from ._routing import NodeRouting
from ._rules import Rules
from ._secret import Secret
from ._sources import LiteFSSource, PrimarySource
from ._state_cache import StateCache
from ._subscriber import resolve_api_url, subscriber_for

__all__ = ["RoutingMiddleware", "middleware_doc", "option_defaults"]

AppT = TypeVar("AppT")

logger = logging.getLogger("litefs_route")


class RoutingMiddleware(Generic[AppT]):
    """Route writes to the LiteFS primary: ``PrimaryRoutingMiddleware(app, **options)``.

    Options (keyword-only, the same for WSGI and ASGI):

    litefs_dir
        The LiteFS mount directory. Default: ``$LITEFS_DIR``. Unset or
        empty: standalone, every request runs locally. Set but not a live
        mount: no primary known (writes wait, then 503). Set but missing
        altogether: a misconfiguration, logged as an ERROR when the
        middleware is built; writes get 503 at once, until it appears.
    instance_id
        This instance's id, as LiteFS writes it into ``.primary``. Default:
        ``$FLY_MACHINE_ID``, then the host name.
    write_on_read
        Path globs of GET/HEAD requests that write and must run on the
        primary (``["/auth/callback/*"]``).
    passthrough
        Path globs never routed, any method (static files, health checks).
    write_sockets
        Path globs of WebSocket endpoints whose handlers write (ASGI; WSGI
        has no WebSockets). On a replica their handshake is answered with the
        replay, so Fly opens the socket on the primary; the socket is never
        accepted here. Answered through the server's
        ``websocket.http.response`` extension (uvicorn has it); a server
        without it gets the socket closed with code 1013 (try again later,
        which it sends as a 403) and a warning logged. Other WebSocket
        paths are not touched.
    cache_ttl
        Seconds a reading of the mount is reused while LiteFS's event stream
        is not followed (default 1.0; 0 reads on every request): the
        staleness bound of every routing decision then.
    primary_wait
        Seconds a write waits for a primary when none is known (default 5.0,
        as LiteFS's proxy) before it is answered 503.
    max_replays
        Replays of one request before it is answered 503 (default 3, at most
        9: Fly's edge gives up after 10).
    replay_body_limit
        The largest body Fly's proxy replays (default 1,000,000 bytes); a
        larger write on a replica gets 413.
    body_timeout
        Seconds a replica spends measuring a chunked write's body (no
        ``Content-Length``) before it answers 408 (default 10.0).
    retry_after
        Seconds in the ``Retry-After`` of a 503 (default 2).
    replay_timeout
        Seconds Fly's proxy tries to reach the primary with a replay before it
        gives up and sends the request back here (fly-replay's ``timeout``,
        with ``fallback=force_self``; default 5.0). A request sent back
        (``fly-replay-failed``) is decided on fresh state and never replayed
        again: it runs here only if this node is now the primary; otherwise it
        gets 503 + ``Retry-After``, the reason logged. None: no ``timeout``
        nor ``fallback`` (Fly tries for a while, then answers its own error).
    forward
        Forward mode: ``"off"`` (default); ``"oversize"``: a replica sends the
        writes Fly cannot replay (a body over ``replay_body_limit``, by
        ``Content-Length`` or as a chunked body grows past it) to the primary
        itself, over the private network, and relays the answer (instead of
        413); every other write is still replayed; ``"always"``: every write
        (deployments without Fly's edge, where nothing honours
        ``fly-replay``). Streams both ways with bounded memory. Needs
        ``forward_secret``. ``ensure_primary()`` still ends in a replay (the
        handler has run): list such paths in ``write_on_read`` there.
    forward_url
        Where the primary answers forwarded requests: a template with
        ``{instance}`` (the primary's id, from the mount) and ``{app}``
        (``$FLY_APP_NAME``), or a callable from instance id to URL. Default
        ``"http://{instance}.vm.{app}.internal:8080"`` (Fly's private
        network; use your app's internal port).
    forward_secret
        The secret every instance shares, that a forwarded request carries:
        the primary runs a forwarded request only with it (403 otherwise, the
        app not called) and strips it before the app sees the request.
        Default ``$LITEFS_ROUTE_FORWARD_SECRET``; at least 16 characters;
        forward mode refuses to start without one.
    forward_timeout
        Seconds to connect to the primary, and for each read and write of a
        forwarded request (default 30.0).
    database
        The database file name in the mount, for read-your-writes, or
        several (a list, or names separated by commas): each gets its own
        TXID cookie, ``__txid`` for the first (as LiteFS's proxy),
        ``__txid_<name>`` for the others. Default: ``$DATABASE_FILENAME``
        (commas too); unset: read-your-writes is off.
    consistency_wait
        Seconds a replica read waits for the TXIDs in its cookies before it
        is replayed to the primary (default 1.0).
    txid_cookie_max_age
        Lifetime of the TXID cookies in seconds (default 300, as LiteFS).
    txid_cookie_secure
        Add ``Secure`` to the cookie (default False, as LiteFS's proxy).
    health_path
        A path the middleware answers itself, for ``GET``, as LiteFS's proxy
        answers ``/litefs/health``: ``200 OK`` while this node's replication
        lag (``.lag``, read on each check) is at most ``max_lag``, always on
        the primary and standalone; ``503`` otherwise. A Fly health check.
        Default None: off (``"/litefs/health"`` is LiteFS's path).
    max_lag
        Seconds of replication lag above which the health check fails
        (default 10.0, as LiteFS's proxy; 0: only an unknown lag fails).
    litefs_api_url
        LiteFS's HTTP API, whose event stream pushes every change of
        primary and every TXID, so decisions are never stale and the mount
        is not polled. Default: ``$LITEFS_API_URL``, else
        ``http://127.0.0.1:20202`` (LiteFS's default ``http.addr``); used
        only with a mount, and only while it answers and agrees with the
        mount (else the mount is read every ``cache_ttl``). ``"off"``: never.
    source
        Where routing learns who is primary (see :class:`~litefs_route.PrimarySource`).
        Default None: LiteFS, from ``litefs_dir``, ``database`` and
        ``litefs_api_url``. ``"postgres"``: Postgres read replicas in several
        Fly regions, a :class:`~litefs_route.PostgresSource` built from
        ``$DATABASE_URL``, ``$PRIMARY_REGION`` and ``$FLY_REGION``; or a
        source object (``PostgresSource(...)``, ``StaticSource(...)``, your
        own). With a source given, ``litefs_dir``, ``database`` and
        ``litefs_api_url`` must not be. A source that routes by region
        replays writes with ``fly-replay: region=``, tags responses
        ``Fly-Primary-Region``, and cannot forward (forward mode needs an
        instance's address): its writes are replayed.
    routing
        Instead of the options above: the ``routing`` of another middleware of
        this process, to share its reading of the mount (the options it was
        built with apply).

    Globs follow LiteFS's ``passthrough``/``always-forward`` syntax: ``*``
    matches any characters including ``/``, anchored at both ends, matched
    against the decoded path without the query string. Invalid options raise
    ``ValueError`` or ``TypeError`` here, never at request time.
    """

    def __init__(
        self,
        app: AppT,
        *,
        litefs_dir: str | os.PathLike[str] | None = None,
        instance_id: str | None = None,
        write_on_read: Iterable[str] = (),
        passthrough: Iterable[str] = (),
        write_sockets: Iterable[str] = (),
        cache_ttl: float = 1.0,
        primary_wait: float = 5.0,
        max_replays: int = 3,
        replay_body_limit: int = 1_000_000,
        body_timeout: float = 10.0,
        retry_after: int = 2,
        replay_timeout: float | None = 5.0,
        forward: str = "off",
        forward_url: ForwardURL = DEFAULT_FORWARD_URL,
        forward_secret: str | None = None,
        forward_timeout: float = 30.0,
        database: str | Sequence[str] | None = None,
        consistency_wait: float = 1.0,
        txid_cookie_max_age: int = 300,
        txid_cookie_secure: bool = False,
        health_path: str | None = None,
        max_lag: float = 10.0,
        litefs_api_url: str | None = None,
        source: PrimarySource | str | None = None,
        routing: NodeRouting | None = None,
    ) -> None:
        self.app = app
        if routing is not None:
            given = locals()
            if changed := [name for name, default in option_defaults().items() if given[name] != default]:
                raise TypeError(f"pass either routing= or options, not both (got {', '.join(changed)})")
            self.routing = routing
            self._setup()
            return
        if any(isinstance(globs, str) for globs in (write_on_read, passthrough, write_sockets)):
            raise TypeError("write_on_read, passthrough and write_sockets take a list of globs, not a string")
        if health_path is not None and not (isinstance(health_path, str) and health_path.startswith("/")):
            raise ValueError(f"health_path must be a path starting with '/', got {health_path!r}")
        instance_id = instance_id or default_instance_id()
        if not is_valid_instance_id(instance_id):
            raise ValueError(f"instance_id must be a host name or Fly Machine ID, got {instance_id!r}")
        for name, seconds in (
            ("cache_ttl", cache_ttl),
            ("primary_wait", primary_wait),
            ("consistency_wait", consistency_wait),
            ("body_timeout", body_timeout),
            ("max_lag", max_lag),
            ("forward_timeout", forward_timeout),
        ):
            if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {seconds!r}")
        if replay_timeout is not None and not (
            isinstance(replay_timeout, int | float) and math.isfinite(replay_timeout) and 0.001 <= replay_timeout <= 300
        ):
            raise ValueError(f"replay_timeout must be None or seconds from 0.001 to 300, got {replay_timeout!r}")
        # Fly's edge gives up after 10 replays; ours must answer 503 before that.
        if not 1 <= max_replays <= 9 or replay_body_limit < 0 or retry_after < 0:
            raise ValueError("max_replays must be 1 to 9; replay_body_limit and retry_after >= 0")
        secret = _forward_secret(forward, forward_url, forward_secret)
        chosen: PrimarySource
        if source is None or source == "litefs":
            chosen = _litefs_source(litefs_dir, database)
        else:
            litefs_options = {"litefs_dir": litefs_dir, "database": database, "litefs_api_url": litefs_api_url}
            if changed := [name for name, value in litefs_options.items() if value is not None]:
                raise TypeError(f"pass either source= or the LiteFS options, not both (got {', '.join(changed)})")
            chosen = _named_source(source)
        positions = chosen.positions
        cookies = (
            TxidCookies(
                chosen.databases, max_age=txid_cookie_max_age, secure=txid_cookie_secure, base=chosen.cookie_base
            )
            if positions is not None
            else None
        )
        cache = _state_cache(chosen, instance_id, float(cache_ttl))
        subscriber = None
        if isinstance(chosen, LiteFSSource):
            api_url = resolve_api_url(litefs_api_url)
            if api_url is not None:
                parts = urlsplit(api_url)
                if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
                    raise ValueError(f"litefs_api_url must be http://host:port or 'off', got {api_url!r}")
            if api_url is not None and chosen.where:
                subscriber = subscriber_for(api_url, chosen.where)
                subscriber.attach(cache, chosen.positions.watchers if chosen.positions is not None else ())
        rules = Rules(
            write_on_read=PathGlobs(write_on_read),
            passthrough=PathGlobs(passthrough),
            write_sockets=PathGlobs(write_sockets),
            max_replays=max_replays,
            replay_body_limit=replay_body_limit,
            primary_wait=float(primary_wait),
            body_timeout=float(body_timeout),
            read_your_writes=positions is not None,
            consistency_wait=float(consistency_wait),
            health_path=health_path,
            max_lag=float(max_lag),
            forward=forward,
            forward_secret=secret,
        )
        self.routing = NodeRouting(
            instance_id=instance_id,
            rules=rules,
            cache=cache,
            positions=positions,
            txid_cookies=cookies,
            subscriber=subscriber,
            retry_after=retry_after,
            replay_timeout=None if replay_timeout is None else float(replay_timeout),
            forward_url=forward_url,
            forward_timeout=float(forward_timeout),
            classify_failure=chosen.classify_failure,
        )
        self._setup()

    def _setup(self) -> None:
        """An adapter's own set-up, once the routing exists (a hook; none by default)."""


def _litefs_source(litefs_dir: str | os.PathLike[str] | None, database: str | Sequence[str] | None) -> LiteFSSource:
    """The default source: LiteFS, from ``litefs_dir`` (``$LITEFS_DIR``) and ``database`` (``$DATABASE_FILENAME``)."""
    mount = os.fspath(litefs_dir) if litefs_dir is not None else os.environ.get("LITEFS_DIR") or None
    if mount and (missing := _missing_mount(mount)) is not None:
        # Said now, not at the first write: a typo in LITEFS_DIR is not an election.
        logger.error(
            "%s: litefs-route is misconfigured, and refuses every write (503) until it exists "
            "(litefs_dir, default $LITEFS_DIR, must be the fuse.dir of litefs.yml)",
            missing,
            extra=log_fields(event="mount_missing", reason=missing),
        )
    databases = _database_names(database if database is not None else os.environ.get("DATABASE_FILENAME", ""))
    return LiteFSSource(mount, databases)


def _named_source(source: PrimarySource | str) -> PrimarySource:
    """The ``source`` option as a source: a name (``"postgres"``), or a source object as it is."""
    if source == "postgres":
        from ._postgres_source import PostgresSource  # its own options from the environment

        return PostgresSource()
    if isinstance(source, str) or not isinstance(source, PrimarySource):
        raise ValueError(f"source must be 'litefs', 'postgres' or a PrimarySource, got {source!r}")
    return source


def _state_cache(source: PrimarySource, instance_id: str, ttl: float) -> StateCache:
    """The cache of *source*'s readings (LiteFS's naming flickers; other sources' is taken at its word)."""
    if isinstance(source, LiteFSSource):
        return StateCache(source.where, instance_id, ttl)
    return StateCache(
        source.where, instance_id, ttl, reader=lambda _where, instance: source.read_state(instance), flickers=False
    )


def _missing_mount(mount: str) -> str | None:
    try:
        return missing_mount(mount)
    except OSError:  # unreadable (EACCES): the first reading says so, as a mount error
        return None


def _forward_secret(forward: str, forward_url: ForwardURL, option: str | None) -> Secret | None:
    """The forward secret (option, else ``$LITEFS_ROUTE_FORWARD_SECRET``), with forward mode's options checked."""
    if forward not in ("off", "oversize", "always"):
        raise ValueError(f"forward must be 'off', 'oversize' or 'always', got {forward!r}")
    secret = option if option is not None else os.environ.get(SECRET_ENV) or None
    if secret is not None and not (
        isinstance(secret, str) and len(secret) >= 16 and secret.isascii() and secret.isprintable()
    ):
        raise ValueError(f"forward_secret (or ${SECRET_ENV}) must be at least 16 printable ASCII characters")
    if forward == "off":
        return None if secret is None else Secret(secret)  # still checks the requests other instances forward here
    if secret is None:
        raise ValueError(f"forward={forward!r} needs a forward_secret (or ${SECRET_ENV}) shared by every instance")
    if isinstance(forward_url, str):
        if "{app}" in forward_url and not os.environ.get("FLY_APP_NAME"):
            raise ValueError("forward_url uses {app} but $FLY_APP_NAME is not set: give forward_url")
        resolve_forward_url(forward_url, "instance")  # raises ValueError for a URL that is not http://host:port
    elif not callable(forward_url):
        raise TypeError("forward_url must be a URL template or a callable from instance id to URL")
    return Secret(secret)


def _database_names(option: str | Sequence[str]) -> tuple[str, ...]:
    """The read-your-writes databases: a name, names separated by commas, or a list of names (validated)."""
    names = option.split(",") if isinstance(option, str) else list(option)
    databases = tuple(name.strip() for name in names if name.strip())
    if databases:
        TxidCookies(databases)  # raises ValueError for a name that is not a plain file name, or a repeated one
    return databases


def middleware_doc(summary: str) -> str:
    """An adapter's class docstring: *summary*, then the options, documented once above."""
    first, _, rest = (RoutingMiddleware.__doc__ or "").partition("\n")
    return f"{summary}\n\n{first}\n{textwrap.dedent(rest)}"


@functools.cache
def option_defaults() -> dict[str, object]:
    """Each option's default, from the one place the options are defined (the signature)."""
    parameters = inspect.signature(RoutingMiddleware.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "routing"}
