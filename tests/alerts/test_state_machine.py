"""The alert state machine as a pure function: hysteresis in both directions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alerts.service import Step, next_state

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _run(observations: list[tuple[float, bool]], for_seconds: float) -> list[Step]:
    """Feed (seconds since T0, holds) observations through the machine; every step."""
    state, pending, clear = "ok", None, None
    steps = []
    for at, holds in observations:
        step = next_state(state, pending, clear, holds, T0 + timedelta(seconds=at), for_seconds)
        state, pending, clear = step.state, step.pending_since, step.clear_since
        steps.append(step)
    return steps


def _notified(steps: list[Step]) -> list[str]:
    return [s.notify for s in steps if s.notify]


def test_a_blip_shorter_than_for_fires_nothing() -> None:
    steps = _run([(0, True), (30, True), (59, False), (90, False)], for_seconds=60)
    assert [s.state for s in steps] == ["pending", "pending", "ok", "ok"]
    assert _notified(steps) == []


def test_fires_once_after_holding_for_and_resolves_once_after_clear_as_long() -> None:
    steps = _run(
        [(0, True), (30, True), (60, True), (90, True), (120, False), (150, False), (180, False)],
        for_seconds=60,
    )
    assert [s.state for s in steps] == [
        "pending", "pending", "firing", "firing", "firing", "firing", "resolved",
    ]  # fmt: skip
    assert _notified(steps) == ["firing", "resolved"]


def test_a_firing_alert_that_flaps_clear_briefly_stays_firing() -> None:
    steps = _run([(0, True), (60, True), (70, False), (100, True), (130, False)], for_seconds=60)
    assert [s.state for s in steps][-1] == "firing"
    assert _notified(steps) == ["firing"]


def test_pending_restarts_its_clock_after_a_blip() -> None:
    steps = _run([(0, True), (50, False), (55, True), (100, True), (115, True)], for_seconds=60)
    assert [s.state for s in steps] == ["pending", "ok", "pending", "pending", "firing"]


def test_for_zero_fires_and_resolves_on_the_first_observation() -> None:
    steps = _run([(0, True), (1, False), (2, True)], for_seconds=0)
    assert _notified(steps) == ["firing", "resolved", "firing"]


def test_resolved_fires_again_only_after_holding_for_again() -> None:
    steps = _run([(0, True), (10, True), (11, False), (21, False), (22, True), (31, True)], 10)
    assert _notified(steps) == ["firing", "resolved"]
    assert steps[-1].state == "pending"
