"""Pydantic I/O of the webhooks domain: event types, endpoint and delivery views."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from webhooks.signing import is_valid_secret

JOB_EVENTS: tuple[str, ...] = (
    "job.started",
    "job.progress",
    "job.completed",
    "job.failed",
    "job.cancelled",
)
DEPLOYMENT_EVENTS: tuple[str, ...] = (
    "deployment.created",
    "deployment.running",
    "deployment.failed",
    "deployment.degraded",
    "deployment.scaled",
    "deployment.stopped",
    "deployment.deleted",
)
RESOURCE_EVENTS: tuple[str, ...] = (
    "resource.ready",
    "resource.failed",
    "resource.degraded",
    "resource.deleted",
    "resource.backup_completed",
    "resource.backup_failed",
)
PROJECT_EVENTS: tuple[str, ...] = (
    "project.deploy.started",
    "project.deploy.succeeded",
    "project.deploy.failed",
    "project.rollback.succeeded",
    "project.crashed",
)
ASSISTANT_EVENTS: tuple[str, ...] = ("instance.created", "instance.deleted")
BILLING_EVENTS: tuple[str, ...] = (
    "invoice.created",
    "invoice.paid",
    "invoice.voided",
    "billing.deployments_stopped",
)
ALERT_EVENTS: tuple[str, ...] = ("alert.firing", "alert.resolved")
ACCESS_EVENTS: tuple[str, ...] = ("key.created", "key.revoked", "member.added", "member.removed")
EVENT_TYPES: tuple[str, ...] = (
    JOB_EVENTS
    + DEPLOYMENT_EVENTS
    + RESOURCE_EVENTS
    + PROJECT_EVENTS
    + ASSISTANT_EVENTS
    + BILLING_EVENTS
    + ALERT_EVENTS
    + ACCESS_EVENTS
)

EventType = Literal[
    "job.started",
    "job.progress",
    "job.completed",
    "job.failed",
    "job.cancelled",
    "deployment.created",
    "deployment.running",
    "deployment.failed",
    "deployment.degraded",
    "deployment.scaled",
    "deployment.stopped",
    "deployment.deleted",
    "resource.ready",
    "resource.failed",
    "resource.degraded",
    "resource.deleted",
    "resource.backup_completed",
    "resource.backup_failed",
    "project.deploy.started",
    "project.deploy.succeeded",
    "project.deploy.failed",
    "project.rollback.succeeded",
    "project.crashed",
    "instance.created",
    "instance.deleted",
    "invoice.created",
    "invoice.paid",
    "invoice.voided",
    "billing.deployments_stopped",
    "alert.firing",
    "alert.resolved",
    "key.created",
    "key.revoked",
    "member.added",
    "member.removed",
]
DeliveryStatus = Literal["pending", "succeeded", "failed"]


def _job_events() -> list[EventType]:
    return ["job.started", "job.progress", "job.completed", "job.failed", "job.cancelled"]


_SECRET_HELP = "`whsec_` + base64 of 24-64 random bytes; generated when omitted."


def _check_secret(value: str | None) -> str | None:
    if value is not None and not is_valid_secret(value):
        raise ValueError("must be 'whsec_' followed by base64 of 24 to 64 bytes")
    return value


class JobWebhookSpec(BaseModel):
    """``"webhook"`` in a job's create body: where to send this job's events."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=2048, description="http(s) URL of the receiver.")
    events: list[EventType] = Field(
        default_factory=_job_events, min_length=1, max_length=len(EVENT_TYPES)
    )
    secret: str | None = Field(default=None, max_length=200, description=_SECRET_HELP)

    _secret = field_validator("secret")(_check_secret)


class WithWebhook(BaseModel):
    """Mixin for job create bodies: the optional per-job ``webhook`` (handled by the runner's
    ``jobs.service.create_job``, which stores it apart and returns its secret once)."""

    webhook: JobWebhookSpec | None = Field(
        default=None, description="Send this job's events to a URL (Standard Webhooks signed)."
    )


class WebhookCreate(BaseModel):
    """``POST /v1/webhooks``: an organisation-wide endpoint."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=2048, description="http(s) URL of the receiver.")
    events: list[EventType] = Field(
        default_factory=_job_events, min_length=1, max_length=len(EVENT_TYPES)
    )
    description: str = Field(default="", max_length=500)
    secret: str | None = Field(default=None, max_length=200, description=_SECRET_HELP)

    _secret = field_validator("secret")(_check_secret)


class WebhookOut(BaseModel):
    """An organisation webhook; ``secret`` only in the create response."""

    id: str
    url: str
    events: list[str]
    description: str
    created_at: datetime
    secret: str | None = Field(default=None, description="Shown once, in the create response.")


class WebhookList(BaseModel):
    data: list[WebhookOut]
    next_cursor: str | None


class DeliveryOut(BaseModel):
    """One delivery in a webhook's log."""

    id: str
    webhook_id: str | None
    job_id: str | None
    msg_id: str = Field(description="The `webhook-id` header: the same on every retry.")
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    response_snippet: str | None
    duration_ms: int | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryList(BaseModel):
    data: list[DeliveryOut]
    next_cursor: str | None


class EventPayload(BaseModel):
    """The JSON body of every delivery (documented; built by ``delivery.encode_payload``)."""

    type: EventType
    timestamp: datetime
    data: dict[str, Any] = Field(description="The job (or deployment) object after the event.")
