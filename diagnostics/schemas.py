"""Input of the diagnostics sleep job."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from webhooks.schemas import WithWebhook


class SleepInput(WithWebhook):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(default=1.0, ge=0, le=300, description="How long to sleep.")
    fail: bool = Field(default=False, description="End the job failed instead of completed.")
    steps: int = Field(default=10, ge=1, le=1000, description="Progress steps (cancel points).")
    crash_attempts: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Kill the worker process mid-job on the first N deliveries (only when "
        "CONVEYOR_DIAGNOSTICS_ALLOW_CRASH is set; used by crash-safety tests).",
    )
