"""Per-request state and the functions handlers call.

The middleware puts a :class:`RequestContext` in a ``ContextVar`` for the
duration of the app call. Handlers reach it with no arguments, in sync and
async code alike: Starlette/FastAPI worker threads (``anyio.to_thread``) and
Flask's async views run in a *copy* of the request's context, so they see the
same object, and what they set on it (never a rebinding of the variable)
reaches the middleware. ``loop.run_in_executor`` and a bare
``threading.Thread`` do not copy the context: call ``ensure_primary()`` in
the request's own task or thread.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from .decision import SETTLE, Decision, RequestInfo
from .mount import NodeState, Role, default_instance_id, read_node_state
from .routing import Reply, Router, is_readonly_error

__all__ = [
    "InstanceInfo",
    "PrimaryRequired",
    "RequestContext",
    "ensure_primary",
    "get_instance_info",
    "report_exception",
]

logger = logging.getLogger("litefs_route")


class PrimaryRequired(Exception):
    """Raised by :func:`ensure_primary` on a node that is not the primary.

    Carries the response that ends the request (409 + ``fly-replay``, or 503
    when no primary is known). Inside Flask/Werkzeug or Starlette/FastAPI the
    exception raised is a subclass that is also the framework's own HTTP
    exception, so the framework answers with that response by itself; the
    middleware makes sure of it even if a handler swallows the exception.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"this request must run on the primary (HTTP {reply.status})")
        self.reply = reply


@dataclass(slots=True, eq=False)
class RequestContext:
    router: Router
    request: RequestInfo
    state: NodeState
    adapter: Literal["wsgi", "asgi"]
    #: Routed as a write, or a handler asked for the primary.
    write: bool = False
    #: Set by ensure_primary() on a non-primary, or by the safety net: what
    #: the request must end in, whatever the app does with the exception
    #: (SETTLE: decided again by the middleware, see Router.settle).
    required: Decision | None = field(default=None)
    #: The request's __txid cookie must be cleared (see consistency.py).
    clear_txid: bool = False


_current: ContextVar[RequestContext | None] = ContextVar("litefs_route_request", default=None)


def _context(caller: str) -> RequestContext:
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError(
            f"litefs_route.{caller}() was called outside a request: install PrimaryRoutingMiddleware "
            "and call it from the request's own task or thread"
        )
    return ctx


def ensure_primary() -> None:
    """Return if this instance may write; else end the request in a replay.

    On the primary (or standalone) this returns and marks the request as a
    write. On a replica it raises :class:`PrimaryRequired`, and the request
    ends in the same 409 + ``fly-replay`` response the middleware gives a
    write, so Fly's proxy runs it again on the primary. When no primary is
    known it ends in 503 + ``Retry-After``. Catching the exception does not
    cancel that: the middleware replaces whatever the app answers instead.

    Raises RuntimeError outside a request handled by the middleware.
    """
    ctx = _context("ensure_primary")
    ctx.write = True
    if ctx.state.is_primary:
        return
    decision = ctx.router.require_primary(ctx.request, ctx.state)
    ctx.required = decision
    from ._frameworks import primary_required

    raise primary_required(ctx.router.reply(decision), ctx.adapter)


def report_exception(exc: BaseException) -> bool:
    """Tell the middleware that the current request failed with *exc*.

    If *exc* is SQLite refusing a write because this node is not the primary
    after all, the request will end in a replay to the primary (or a 503)
    instead of the app's error response. Returns True if it will.

    The middleware calls this itself for exceptions that reach it, and Flask's
    ``got_request_exception`` signal is connected to it. Frameworks that turn
    exceptions into a 500 before the middleware sees them can connect their
    own hook (Django: ``got_request_exception.connect(lambda sender, request,
    **kw: report_exception(sys.exc_info()[1]))``). A safety net, not a
    substitute for ``ensure_primary()``: side effects before the failed write
    happened here. Reads the mount (blocking): call it from a thread.
    """
    ctx = _current.get()
    return ctx is not None and mark_readonly_failure(ctx, exc)


def mark_readonly_failure(ctx: RequestContext, exc: BaseException) -> bool:
    """:func:`report_exception` for a known request context (no I/O: the middleware settles it)."""
    if ctx.required is not None or not is_readonly_error(exc):
        return False
    ctx.required = SETTLE
    logger.warning(
        "a write slipped through to a non-primary (SQLite refused it as read-only); "
        "replaying it to the primary or refusing it"
    )
    return True


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """Who this instance is and who is primary."""

    current_instance: str
    #: None when no primary is known.
    primary_instance: str | None
    is_primary: bool
    role: Role


def get_instance_info(*, litefs_dir: str | None = None, instance_id: str | None = None) -> InstanceInfo:
    """This instance and the primary.

    Inside a request handled by the middleware, with no arguments: the
    reading the request was routed on (no I/O). Otherwise it reads the mount
    now (``litefs_dir``, default ``$LITEFS_DIR``), which blocks briefly.
    """
    ctx = _current.get()
    if ctx is not None and litefs_dir is None and instance_id is None:
        state = ctx.state
    else:
        import os

        state = read_node_state(litefs_dir or os.environ.get("LITEFS_DIR"), instance_id or default_instance_id())
    return InstanceInfo(state.instance_id, state.primary_id, state.is_primary, state.role)
