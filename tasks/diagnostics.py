"""Diagnostics jobs (``diagnostics.run``): ``sleep.submit({"seconds": 1}, org="acme")``."""

from __future__ import annotations

from typing import Any

from diagnostics.jobs import run_sleep
from jobs.context import JobContext
from tasks.runner import job_task


@job_task("diagnostics")
def sleep(ctx: JobContext) -> dict[str, Any]:
    """Sleep cooperatively, reporting progress; honours cancel between steps."""
    return run_sleep(ctx)
