"""Driving the decision's plans in tests: the real driver, with a mount that never changes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litefs_route._drivers import drive
from litefs_route._mount import NodeState
from litefs_route._plans import plan_request
from litefs_route._request import RequestInfo
from litefs_route._routing import NodeRouting
from litefs_route._rules import Rules
from litefs_route._verdicts import Outcome
from litefs_route.wsgi import PrimaryRoutingMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse


def routing_for(**options: Any) -> NodeRouting:
    """The routing a middleware builds from *options* (its defaults for the rest)."""
    return PrimaryRoutingMiddleware(_no_app, **options).routing


def rules(**options: Any) -> Rules:
    """The rules a middleware builds from *options*."""
    return routing_for(instance_id="me", **options).rules


def _no_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    raise AssertionError("only the routing is used")


@dataclass
class FixedIO:
    """:class:`~litefs_route._drivers.BlockingIO` for a node whose state never changes.

    Time passes only when the plan sleeps, so a wait for a primary ends after
    exactly ``primary_wait`` of (simulated) polling.
    """

    state: NodeState
    body_size: int = 0
    caught_up: bool = True
    positions: tuple[int | None, ...] = (None,)
    now: float = 0.0
    sleeps: int = 0

    def read_state(self, max_age: float | None) -> NodeState:
        return self.state

    def read_mount(self) -> NodeState:
        return self.state

    def clock(self) -> float:
        return self.now

    def await_change(self, seen: NodeState, timeout: float, from_mount: bool) -> NodeState:
        self.now += timeout  # nothing changes: the whole timeout passes
        self.sleeps += 1
        return self.state

    def measure_body(self, limit: int, timeout: float) -> int | None:
        return min(self.body_size, limit + 1)

    def wait_for_txids(self, txids: tuple[int, ...], timeout: float) -> bool:
        return self.caught_up

    def read_positions(self) -> tuple[int | None, ...]:
        return self.positions


def route(request: RequestInfo, state: NodeState, rules: Rules, **io: object) -> Outcome:
    """The outcome of routing *request* on a node whose state is *state*."""
    return drive(plan_request(request, rules), FixedIO(state, **io))  # type: ignore[arg-type]
