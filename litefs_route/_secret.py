"""A secret that never prints: the forward secret, and a request's claim to it.

Wherever one is kept (the routing's rules, a request about to be forwarded, a
request's routing context, which the WSGI adapter leaves in the environ and
Django's error mail prints with ``request.META``), its ``repr`` and ``str``
show no character of it. Its value is read only where it is sent or compared.
"""

from __future__ import annotations

import hmac

__all__ = ["Secret"]


class Secret:
    """A string whose ``repr``/``str`` hide it; compare with :meth:`matches`, send with :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a secret is a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The value itself: only to send it, never to log or show it."""
        return self._value

    def matches(self, other: Secret | None) -> bool:
        """True if *other* holds the same value (compared in constant time)."""
        # surrogatepass: a claim is any text a server handed over, and comparing it never raises
        mine, theirs = (s._value.encode("utf-8", "surrogatepass") for s in (self, other)) if other else (b"", b"")
        return other is not None and hmac.compare_digest(mine, theirs)

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__
