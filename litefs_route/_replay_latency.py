"""How long a replayed request took to arrive: the ``t`` field of ``fly-replay-src``.

Fly's proxy stamps a replayed request with ``fly-replay-src: instance=…;region=…;t=<µs>;state=…``,
``t`` being when the replaying instance answered, in microseconds since the
epoch. The header is client input as far as this process can tell: a value
that is not 1-20 digits, or a header longer than Fly's, is ignored, never
an error. The two clocks belong to different Machines, so a latency a little
below zero is recorded as 0; one further than :data:`PLAUSIBLE_SECONDS` from
now either way (a forged or garbled ``t``, a clock far off) is dropped.
"""

from __future__ import annotations

import re

from ._request import REPLAY_HEADER_LIMIT

__all__ = ["PLAUSIBLE_SECONDS", "replay_latency"]

#: A latency (or a clock skew) beyond this many seconds is not a replay's: dropped.
PLAUSIBLE_SECONDS = 60.0

_T_FIELD = re.compile(r"(?:^|;)\s*t=([0-9]{1,20})\s*(?=;|$)")


def replay_latency(replay_src: str, now: float) -> float | None:
    """Seconds from ``t`` in *replay_src* to *now* (``time.time()``), clamped at 0; None if absent or implausible."""
    if len(replay_src) > REPLAY_HEADER_LIMIT:
        return None
    match = _T_FIELD.search(replay_src)
    if match is None:
        return None
    seconds = now - int(match[1]) / 1_000_000
    if not -PLAUSIBLE_SECONDS <= seconds <= PLAUSIBLE_SECONDS:
        return None
    return max(seconds, 0.0)
