"""Pydantic I/O of the alerts domain: the conditions (a union discriminated on ``type``), the
channels, the rule's create/patch bodies and views, and its events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from config.queues import KINDS, QUEUES

AlertState = Literal["ok", "pending", "firing", "resolved"]
EventState = Literal["firing", "resolved"]
SubjectStatus = Literal["failed", "degraded", "stopped"]
ALL_SUBJECT_STATUSES: tuple[SubjectStatus, ...] = ("failed", "degraded", "stopped")
#: Subject types a ``deployment_status`` condition can watch (``alerts.conditions.SUBJECTS``
#: reads each one's status): a model deployment (``dep_…``) or an app project's environment
#: (``env_…``, ``GET /v1/projects/{id}/environments``).
SUBJECT_TYPES: tuple[str, ...] = ("deployment", "project_environment")

_FOR_HELP = (
    "Seconds the condition must hold before the alert fires, and be clear before it resolves "
    "(hysteresis; `for` is accepted too)."
)


class _Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    for_seconds: int = Field(
        default=60,
        ge=0,
        le=7 * 86400,
        validation_alias=AliasChoices("for_seconds", "for"),
        description=_FOR_HELP,
    )


class UsageCondition(_Condition):
    """A meter's quantity in the current billing period over ``threshold``."""

    type: Literal["usage"]
    meter: str = Field(min_length=1, max_length=64, description="e.g. gpu_seconds, tokens_out.")
    threshold: float = Field(gt=0)


class BudgetCondition(_Condition):
    """The period's cost over ``amount_micros``, or over ``percent_of_credits`` % of the credit
    balance (exactly one of the two)."""

    type: Literal["budget"]
    amount_micros: int | None = Field(default=None, gt=0)
    percent_of_credits: float | None = Field(default=None, gt=0, le=1000)

    @model_validator(mode="after")
    def _one_limit(self) -> BudgetCondition:
        if (self.amount_micros is None) == (self.percent_of_credits is None):
            raise ValueError("give exactly one of amount_micros and percent_of_credits")
        return self


class DeploymentStatusCondition(_Condition):
    """A deployment (or project environment) in one of ``statuses`` for ``for_seconds``."""

    type: Literal["deployment_status"]
    subject_type: str = Field(
        default="deployment", description="`deployment` or `project_environment`."
    )
    subject_id: str = Field(min_length=1, max_length=64)
    statuses: list[SubjectStatus] = Field(
        default_factory=lambda: list(ALL_SUBJECT_STATUSES), min_length=1, max_length=3
    )

    @model_validator(mode="after")
    def _known_subject(self) -> DeploymentStatusCondition:
        if self.subject_type not in SUBJECT_TYPES:
            raise ValueError(f"subject_type must be one of {', '.join(SUBJECT_TYPES)}")
        return self


class ErrorRateCondition(_Condition):
    """Among the jobs of ``kind`` created in the last ``window_seconds`` that finished, the
    share that failed is at least ``ratio`` (and at least ``min_jobs`` finished)."""

    type: Literal["error_rate"]
    kind: str = Field(min_length=1, max_length=40)
    ratio: float = Field(gt=0, le=1)
    window_seconds: int = Field(default=300, ge=10, le=86400)
    min_jobs: int = Field(default=1, ge=1, le=100000)

    @model_validator(mode="after")
    def _known_kind(self) -> ErrorRateCondition:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        return self


class QueueBacklogCondition(_Condition):
    """A queue's broker depth over ``depth``, or its oldest queued job older than
    ``oldest_age_seconds`` (at least one of the two)."""

    type: Literal["queue_backlog"]
    queue: str
    depth: int | None = Field(default=None, ge=0)
    oldest_age_seconds: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check(self) -> QueueBacklogCondition:
        if self.queue not in QUEUES:
            raise ValueError(f"queue must be one of {', '.join(QUEUES)}")
        if self.depth is None and self.oldest_age_seconds is None:
            raise ValueError("give depth, oldest_age_seconds or both")
        return self


Condition = Annotated[
    UsageCondition
    | BudgetCondition
    | DeploymentStatusCondition
    | ErrorRateCondition
    | QueueBacklogCondition,
    Field(discriminator="type"),
]
CONDITION_TYPES: tuple[str, ...] = (
    "usage",
    "budget",
    "deployment_status",
    "error_rate",
    "queue_backlog",
)


class WebhookChannel(BaseModel):
    """The organisation's webhooks (``/v1/webhooks``) subscribed to ``alert.firing`` /
    ``alert.resolved``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["webhook"]


class EmailChannel(BaseModel):
    """E-mail through the platform's SMTP server (``CONVEYOR_SMTP_HOST``)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["email"]
    to: list[Annotated[str, Field(pattern=r"^[^@\s,;<>]+@[^@\s,;<>]+$", max_length=254)]] = Field(
        min_length=1, max_length=20
    )


Channel = Annotated[WebhookChannel | EmailChannel, Field(discriminator="type")]


def _default_channels() -> list[WebhookChannel | EmailChannel]:
    return [WebhookChannel(type="webhook")]


class AlertCreate(BaseModel):
    """``POST /v1/alerts``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    condition: Condition
    channels: list[Channel] = Field(default_factory=_default_channels, max_length=10)
    enabled: bool = True


class AlertPatch(BaseModel):
    """``PATCH /v1/alerts/{id}``: the fields given change; a new condition restarts the rule
    (a firing alert is resolved first)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    condition: Condition | None = None
    channels: list[Channel] | None = Field(default=None, max_length=10)
    enabled: bool | None = None


class AlertOut(BaseModel):
    id: str
    name: str
    condition: dict[str, Any]
    channels: list[dict[str, Any]]
    enabled: bool
    state: AlertState
    last_value: float | None
    last_evaluated_at: datetime | None
    last_transition_at: datetime | None
    created_at: datetime
    updated_at: datetime


class AlertList(BaseModel):
    data: list[AlertOut]
    next_cursor: str | None


class AlertEventOut(BaseModel):
    id: str
    alert_id: str
    state: EventState
    value: float | None
    details: dict[str, Any]
    created_at: datetime


class AlertEventList(BaseModel):
    data: list[AlertEventOut]
    next_cursor: str | None


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)
