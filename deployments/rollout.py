"""Drive a backend until a rollout finishes: running, failed, cancelled or past its deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

from deployments.backends.base import (
    Backend,
    BackendState,
    DeploymentSpec,
    Observation,
    ReasonCode,
    reason,
)


def wait_for_rollout(
    backend: Backend,
    spec: DeploymentSpec,
    state: BackendState | None,
    *,
    deadline_s: float,
    poll_s: float = 1.0,
    cancelled: Callable[[], bool] | None = None,
    on_observation: Callable[[Observation], None] | None = None,
) -> Observation:
    """Reconcile until the deployment runs or fails; fail it at the deadline.

    Between reconciles it waits for the backend to report a change (a watch), at most `poll_s`.

    `on_observation` sees every observation (the caller stores state and status as it goes, so
    a worker that dies mid-rollout leaves the store truthful); `cancelled` is checked between
    polls and ends the wait early with the last observation.
    """
    deadline = time.monotonic() + deadline_s
    while True:
        obs = backend.reconcile(spec, state)
        state = obs.state
        if obs.status in ("running", "failed", "stopped"):
            if on_observation is not None:
                on_observation(obs)
            return obs
        if time.monotonic() >= deadline:
            last = f"; last: {obs.reason}" if obs.reason else ""
            failed = obs.model_copy(
                update={
                    "status": "failed",
                    "reason": reason(
                        ReasonCode.ROLLOUT_TIMEOUT, f"not running within {deadline_s:g}s{last}"
                    ),
                }
            )
            if on_observation is not None:
                on_observation(failed)
            return failed
        if on_observation is not None:
            on_observation(obs)
        if cancelled is not None and cancelled():
            return obs
        backend.wait_for_change(spec, min(poll_s, max(0.0, deadline - time.monotonic())))
