"""The explicit retry policy (common.retry): delays, the cap, the attempt cap and the reason."""

from __future__ import annotations

import random

import pytest

from common.retry import Retry, RetryPolicy, StopReason


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=None, base=1.0, factor=2.0, cap=5.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_stays_within_its_fraction_and_under_the_cap() -> None:
    policy = RetryPolicy(attempts=None, base=10.0, factor=1.0, cap=10.5, jitter=0.1)
    delays = [policy.delay(1, random.Random(seed)) for seed in range(200)]
    assert all(9.0 <= d <= 10.5 for d in delays) and len(set(delays)) > 1


def test_the_attempt_cap_counts_the_first_attempt_and_says_why_it_stopped() -> None:
    policy = RetryPolicy(attempts=3, base=1.0, factor=3.0, cap=60.0)
    assert policy.next(1) == Retry(1.0)
    assert policy.next(2) == Retry(3.0)
    final = policy.next(3)
    assert final.stop and final.reason == StopReason.ATTEMPTS_EXHAUSTED


def test_no_cap_on_attempts_retries_forever_and_a_permanent_failure_stops_at_once() -> None:
    policy = RetryPolicy(attempts=None, base=0.5, factor=2.0, cap=30.0)
    assert not policy.next(10_000).stop
    assert policy.next(1, retryable=False) == Retry(None, StopReason.NOT_RETRYABLE)


@pytest.mark.parametrize(
    "kwargs",
    [{"attempts": 0}, {"base": -1.0}, {"factor": 0.5}, {"cap": -1.0}, {"jitter": 1.0}],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    values: dict[str, float | None] = {"attempts": 3, "base": 1.0, **kwargs}
    with pytest.raises(ValueError):
        RetryPolicy(**values)  # type: ignore[arg-type]


def test_attempts_are_numbered_from_one() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=3, base=1.0).delay(0)
