"""Pydantic I/O of the plans domain: plan limits and the usage report."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class PlanLimits(BaseModel):
    """The limits of a plan (also the CLI's input when defining one)."""

    model_config = ConfigDict(from_attributes=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,49}$")
    pages_per_month: int = Field(ge=0)
    concurrent_jobs: int = Field(ge=0)
    gpu_seconds_per_month: int = Field(ge=0)
    max_pages_per_crawl: int = Field(ge=1)
    read_per_minute: int = Field(ge=1)
    write_per_minute: int = Field(ge=1)
    max_backup_retention_days: int = Field(default=7, ge=1)
    max_backup_retention_count: int = Field(default=10, ge=1)


class UsageMeter(BaseModel):
    """One metered quantity: how much was used of how much."""

    used: int
    limit: int
    remaining: int


class RateLimits(BaseModel):
    read_per_minute: int
    write_per_minute: int


class InstanceTokens(BaseModel):
    """One assistant instance's tokens in the period."""

    instance_id: str
    name: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageReport(BaseModel):
    """``GET /v1/usage``: the organisation's plan and its usage in the current period."""

    plan: str
    period_start: datetime
    period_end: datetime
    pages: UsageMeter
    gpu_seconds: UsageMeter
    concurrent_jobs: UsageMeter
    max_pages_per_crawl: int
    rate_limits: RateLimits
    replica_seconds: int = Field(
        default=0, description="App project replica-seconds this period (metered, no limit)."
    )
    assistants: list[InstanceTokens] = Field(
        default_factory=list, description="Tokens per assistant instance this period."
    )
