"""The exception :func:`~litefs_route.ensure_primary` and :func:`~litefs_route.ensure_instance` raise."""

from __future__ import annotations

from ._replies import Reply

__all__ = ["PrimaryRequired"]


class PrimaryRequired(Exception):
    """Raised by :func:`~litefs_route.ensure_primary` on a node that is not the primary.

    (And by :func:`~litefs_route.ensure_instance` on any other instance than
    the one named.) Carries the response that ends the request (409 +
    ``fly-replay``, or a refusal); when no primary is known yet, a 409
    stand-in (``replies.STAND_IN``) the middleware replaces with the replay
    or the 503 once it has waited for one. Inside Flask/Werkzeug or Starlette/FastAPI the
    exception raised is a subclass that is also the framework's own HTTP
    exception (:mod:`litefs_route._frameworks`), so the framework answers with
    that response by itself; the middleware makes sure of it even if a
    handler swallows the exception.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply)
        self.reply = reply

    def __str__(self) -> str:  # the framework flavours' own __init__ rewrite args: not from them
        return f"this request must run on another instance (HTTP {self.reply.status})"
