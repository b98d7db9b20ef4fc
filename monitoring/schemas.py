"""What the monitoring routes answer: dependency health, the worker pool, queue statistics."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

ServiceState = Literal["ok", "degraded", "down"]
OverallState = Literal["healthy", "degraded", "unhealthy"]
RunnerState = Literal["idle", "busy", "offline"]


class ServiceHealth(BaseModel):
    status: ServiceState
    latency_ms: float | None = None
    message: str | None = None


class HealthStatus(BaseModel):
    """``GET /v1/health/status`` (Sylphx's shape): 503 when ``unhealthy``."""

    status: OverallState
    services: dict[str, ServiceHealth] = Field(
        description="database, broker, workers, storage (the data dir's disk) and, when a "
        "backend runs on Kubernetes, kubernetes (its API server)"
    )
    timestamp: datetime


class Runner(BaseModel):
    """One Celery worker, from its latest heartbeat."""

    name: str
    queues: list[str]
    status: RunnerState
    active: int = Field(description="Tasks running at the latest heartbeat.")
    concurrency: int
    last_heartbeat: datetime


class RunnersSummary(BaseModel):
    idle: int = 0
    busy: int = 0
    offline: int = 0


class RunnersReport(BaseModel):
    runners: list[Runner]
    summary: RunnersSummary


class QueueStats(BaseModel):
    name: str
    depth: int = Field(description="Messages waiting in the broker.")
    oldest_age_s: float | None = Field(
        description="Age of the oldest queued job of this queue's kinds (null: none)."
    )
    consumers: int = Field(description="Online workers consuming this queue.")
    running: int = Field(description="Jobs of this queue's kinds running now.")
    completed_last_minute: int


class QueuesReport(BaseModel):
    data: list[QueueStats]
