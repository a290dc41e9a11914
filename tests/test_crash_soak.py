"""The crash soak's short form on real LiteFS (marker ``litefs``): ``bench/crash_soak.py`` with fewer writes.

Two configurations (Starlette under uvicorn following LiteFS's event stream,
Flask under gunicorn polling the mount), each on a fresh 3-node cluster with
a Consul lease: 6 writers post 240 unique values through the front to random
instances while the primary's LiteFS gets a SIGTERM and a kill -9 and the
primary's app server a kill -9, in a seeded order. Every write is then looked
up on every node. The full run, its options and what each count means:
``python -m bench.crash_soak --help``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.crash_soak import Config, Settings, run_soak, summary
from litefs_route_devcluster.pytest_plugin import require_litefs

pytestmark = pytest.mark.litefs


def test_no_write_is_doubled_refused_after_running_lost_unexplained_or_a_500_while_primaries_die(
    tmp_path: Path,
) -> None:
    require_litefs()
    settings = Settings(writes=240, changes=2, app_kills=1, base_dir=str(tmp_path), max_seconds=100)
    report = run_soak([Config("asgi", stream=True), Config("wsgi", stream=False)], settings)
    # The figures, and each broken invariant's writes (their replays, the faults near them, the app's log).
    evidence = {
        r.config: {
            k: v for k, v in r.evidence.items() if k in ("doubled", "500", "lost (unexplained)", "refused but ran")
        }
        for r in report.results
    }
    figures = f"{summary(report)}\nevidence: {evidence}"
    print(figures)  # shown with -s, and on failure

    assert [r.incomplete for r in report.results] == [None, None], figures
    assert all(r.nodes_agree for r in report.results), figures
    total = report.total
    assert (total.primary_changes, total.app_kills) == (4, 2), figures
    assert sorted(total.elected_ms) == ["kill9-litefs", "sigterm"], figures
    assert total.writes == 2 * settings.writes, figures
    assert total.doubled == 0, figures
    assert total.errors_500 == 0, figures
    assert total.refused_but_ran == 0, figures
    assert total.lost_unexplained == 0, figures
