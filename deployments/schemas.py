"""Pydantic I/O of the deployments API (requests, the deployment object, templates, metrics)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DeploymentStatus = Literal[
    "pending",
    "deploying",
    "running",
    "degraded",
    "failed",
    "stopping",
    "stopped",
    "deleting",
    "deleted",
]
ALL_STATUSES: tuple[str, ...] = (
    "pending",
    "deploying",
    "running",
    "degraded",
    "failed",
    "stopping",
    "stopped",
    "deleting",
    "deleted",
)
NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class Replicas(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: int = Field(default=1, ge=0, le=16)
    max: int = Field(default=1, ge=0, le=16)

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.max < self.min:
            raise ValueError("replicas.max must be at least replicas.min")
        return self


class RuntimeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_model_len: int | None = Field(default=None, ge=16, le=1_048_576)
    extra_args: list[str] = Field(default_factory=list, max_length=32)


def _check_env(env: dict[str, str] | None) -> dict[str, str] | None:
    import re

    if env is None:
        return None
    if len(env) > 64:
        raise ValueError("at most 64 environment variables")
    for key, value in env.items():
        if not re.match(ENV_KEY_PATTERN, key):
            raise ValueError(f"invalid environment variable name {key!r}")
        if len(value) > 8192:
            raise ValueError(f"value of {key} is longer than 8192 characters")
    return env


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Also the `model` in chat requests.")
    model: str = Field(min_length=1, max_length=200, description="A /v1/models/templates name.")
    runtime: Literal["vllm", "transformers"] | None = None
    gpu_type: str | None = Field(default=None, max_length=100)
    gpu_count: int | None = Field(default=None, ge=0, le=8)
    replicas: Replicas = Field(default_factory=Replicas)
    env: dict[str, str] = Field(default_factory=dict, description="Encrypted at rest; masked.")
    runtime_options: RuntimeOptions = Field(default_factory=RuntimeOptions)

    _env = field_validator("env")(_check_env)


class DeploymentPatch(BaseModel):
    """Any change makes a new revision, rolled out by a deploy job."""

    model_config = ConfigDict(extra="forbid")

    runtime: Literal["vllm", "transformers"] | None = None
    gpu_type: str | None = Field(default=None, max_length=100)
    gpu_count: int | None = Field(default=None, ge=0, le=8)
    replicas: Replicas | None = None
    env: dict[str, str] | None = None
    runtime_options: RuntimeOptions | None = None

    _env = field_validator("env")(_check_env)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int = Field(ge=1)


class DeploymentLinks(BaseModel):
    self: str
    job: str | None
    logs: str
    metrics: str


class DeploymentOut(BaseModel):
    id: str
    name: str
    model: str
    runtime: str
    gpu_type: str | None
    gpu_count: int
    replicas: Replicas
    ready_replicas: int
    scaled_to_zero: bool = Field(
        False,
        description="True while an idle deployment with replicas.min 0 runs no replica (status "
        "stays `running`); the next request answers 503 with Retry-After and starts one.",
    )
    env: dict[str, str] = Field(description="Values masked.")
    runtime_options: dict[str, Any]
    status: DeploymentStatus
    status_reason: str | None
    endpoint: str | None
    revision: int
    gpu_seconds: float
    created_at: str
    updated_at: str
    links: DeploymentLinks


class RevisionOut(BaseModel):
    revision: int
    reason: str
    config: dict[str, Any]
    created_at: str
    current: bool


class ModelTemplate(BaseModel):
    name: str
    source: str
    runtime: Literal["vllm", "transformers"]
    default_gpu_type: str | None
    default_gpu_count: int
    context_length: int | None


class LatencyPercentiles(BaseModel):
    p50: float | None
    p90: float | None
    p99: float | None


class DeploymentMetrics(BaseModel):
    deployment_id: str
    requests: int
    errors: int
    tokens: int
    latency_ms: LatencyPercentiles
    gpu_seconds: float
    replicas_ready: int
    replicas_desired: int


class DeploymentListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = None
    status: str | None = Field(default=None, description="Comma-separated statuses.")
    created_after: datetime | None = Field(default=None, description="Exclusive bound.")
    created_before: datetime | None = Field(default=None, description="Exclusive bound.")
    sort: Literal["-created_at", "created_at"] = "-created_at"


class LogsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tail: int = Field(default=200, ge=0, le=10_000)
    follow: bool = False


class DeployJobInput(BaseModel):
    """Input of a `deploy` job: one lifecycle operation on one deployment."""

    deployment_id: str = Field(max_length=40)
    operation: Literal["apply", "scale_up", "stop", "delete"]
    revision: int | None = None
