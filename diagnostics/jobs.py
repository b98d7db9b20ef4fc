"""The diagnostics job's work: sleep in steps, report progress, honour cancel between steps."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from common.errors import JobFailed
from config import get_settings
from diagnostics.schemas import SleepInput
from jobs.context import JobContext


def run_sleep(ctx: JobContext) -> dict[str, Any]:
    """Sleep ``seconds`` in ``steps``; a test may ask it to crash its worker or to fail."""
    params = SleepInput.model_validate(ctx.input)
    allow_crash = get_settings().diagnostics_allow_crash
    step = params.seconds / params.steps
    started = time.monotonic()
    for done in range(1, params.steps + 1):
        ctx.check_cancelled(min_interval=0.2)
        if step:
            time.sleep(step)
        if allow_crash and ctx.attempt <= params.crash_attempts and done == params.steps // 2 + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if params.steps <= 100 or done % (params.steps // 100) == 0 or done == params.steps:
            ctx.progress(steps_total=params.steps, steps_done=done)
    if params.fail:
        raise JobFailed("The diagnostics job was asked to fail.", code="diagnostics_failure")
    return {"slept_seconds": round(time.monotonic() - started, 3), "steps": params.steps}
