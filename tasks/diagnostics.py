"""Diagnostics jobs (``diagnostics.run``): ``sleep.submit({"seconds": 1}, org="acme")``."""

from __future__ import annotations

from typing import Any

from config import get_settings
from diagnostics.schemas import SleepInput
from diagnostics.service import run_sleep
from tasks.runner import JobContext, job_task


@job_task("diagnostics")
def sleep(ctx: JobContext) -> dict[str, Any]:
    """Sleep cooperatively, reporting progress; honours cancel between steps."""
    params = SleepInput.model_validate(ctx.input)
    return run_sleep(ctx, params, allow_crash=get_settings().diagnostics_allow_crash)
