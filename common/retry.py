"""Retrying as an explicit policy: how long to wait before each retry, when to stop, and why.

    policy = RetryPolicy(attempts=6, base=10.0, factor=4.0, cap=3600.0)
    decision = policy.next(attempt)          # attempt: the one that just failed, from 1
    if decision.stop:                        # decision.reason says why it stopped
        ...
    else:
        schedule_again(countdown=decision.delay)

``attempts`` counts every attempt, the first included (``None``: no cap on attempts); delays
grow ``base * factor ** (retry - 1)`` and never exceed ``cap``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class StopReason(StrEnum):
    """Why a retry policy stopped retrying (the final state a caller records)."""

    SUCCEEDED = "succeeded"
    NOT_RETRYABLE = "not_retryable"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"


@dataclass(frozen=True)
class Retry:
    """The policy's answer after a failed attempt: wait ``delay`` seconds, or stop (``reason``)."""

    delay: float | None
    reason: StopReason | None = None

    @property
    def stop(self) -> bool:
        return self.delay is None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int | None
    base: float
    factor: float = 2.0
    cap: float = float("inf")
    jitter: float = 0.0  # ± fraction of the delay, so retries of many jobs spread out

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("attempts counts the first attempt: at least 1 (or None)")
        if self.base < 0 or self.factor < 1 or self.cap < 0 or not 0 <= self.jitter < 1:
            raise ValueError("need base >= 0, factor >= 1, cap >= 0 and 0 <= jitter < 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1 for the first) before the next."""
        if attempt < 1:
            raise ValueError("attempts are numbered from 1")
        try:
            delay = min(self.cap, self.base * self.factor ** (attempt - 1))
        except OverflowError:  # thousands of retries: long past the cap
            delay = self.cap
        if self.jitter:
            delay *= 1.0 + (rng or random).uniform(-self.jitter, self.jitter)
        return min(self.cap, delay)

    def exhausted(self, attempt: int) -> bool:
        """Whether ``attempt`` was the last one the policy allows."""
        return self.attempts is not None and attempt >= self.attempts

    def next(self, attempt: int, *, retryable: bool = True) -> Retry:
        """What to do after failed attempt ``attempt``: a delay, or stop with the reason."""
        if not retryable:
            return Retry(None, StopReason.NOT_RETRYABLE)
        if self.exhausted(attempt):
            return Retry(None, StopReason.ATTEMPTS_EXHAUSTED)
        return Retry(self.delay(attempt))
