"""The replay's latency from fly-replay-src's ``t``: parsed safely, clamped or dropped as documented."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from litefs_route._replay_latency import PLAUSIBLE_SECONDS, replay_latency

NOW = 1_796_000_000.0  # seconds since the epoch (December 2026)
NOW_US = int(NOW * 1_000_000)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"instance=e784079b449483;region=ams;t={NOW_US - 2500};state=litefs-route-hop-1", 0.0025),
        (f"t={NOW_US - 2_000_000}", 2.0),
        (f"instance=x; t={NOW_US - 1000} ;state=y", 0.001),  # spaces around a field
        (f"instance=x;t={NOW_US + 500_000}", 0.0),  # the replaying Machine's clock half a second ahead: 0
        (f"instance=x;t={NOW_US - 61_000_000}", None),  # over a minute: not a replay's latency
        (f"instance=x;t={NOW_US + 61_000_000}", None),  # a clock (or a forger) far ahead
        ("instance=x;t=0", None),  # the epoch
        ("instance=x;t=99999999999999999999", None),  # 20 digits: parsed, implausible
        ("instance=x;t=999999999999999999999", None),  # 21 digits: not a t
        ("instance=x;t=-5", None),
        ("instance=x;t=1.5e15", None),
        ("instance=x;t=", None),
        ("instance=x;state=litefs-route-hop-1", None),  # no t (a cached replay carries none)
        (f"instance=x;at={NOW_US}", None),  # another field's name ending in t
        (f"instance=x;t={NOW_US};" + "x" * 1024, None),  # longer than Fly's header
        ("", None),
    ],
)
def test_replay_latency(header: str, expected: float | None) -> None:
    latency = replay_latency(header, NOW)
    if expected is None:
        assert latency is None
    else:
        assert latency == pytest.approx(expected, abs=1e-6)


@given(st.text(max_size=300))
def test_any_header_gives_a_plausible_latency_or_none(header: str) -> None:
    latency = replay_latency(header, NOW)
    assert latency is None or 0 <= latency <= PLAUSIBLE_SECONDS
