"""Pydantic shapes shared by every router: the job object, list pages, the error envelope."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from common.errors import ErrorCode, ValidationFailed

T = TypeVar("T")


class ErrorBody(BaseModel):
    code: ErrorCode = Field(description="What went wrong, one of the documented codes.")
    message: str
    details: Any = None
    request_id: str = Field(description="Starts with req_; equals the X-Request-ID header.")


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class JobError(BaseModel):
    code: str
    message: str


class JobLinks(BaseModel):
    self: str
    result: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Absent once the result expired or was deleted.",
    )
    flower: str = Field(description="The job's first task in Flower (task id = job id).")


class JobOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    kind: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    input: dict[str, Any]
    progress: dict[str, Any]
    error: JobError | None
    attempts: int
    created_at: str
    started_at: str | None
    completed_at: str | None
    expires_at: str | None
    links: JobLinks


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None


class ListQuery(BaseModel):
    """Common list parameters; unknown query parameters are rejected (422)."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = None
    created_after: datetime | None = Field(default=None, description="Exclusive bound.")
    created_before: datetime | None = Field(default=None, description="Exclusive bound.")
    sort: Literal["-created_at", "created_at"] = "-created_at"


def parse_statuses(raw: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """``status=running,queued`` → the distinct statuses, in order; 422 naming an unknown one."""
    if not raw:
        return ()
    statuses = tuple(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    bad = [s for s in statuses if s not in allowed]
    if bad:
        raise ValidationFailed(
            f"Unknown status {bad[0]!r}; use one of {', '.join(allowed)}.",
            details=[{"loc": ["query", "status"], "msg": "unknown status", "type": "enum"}],
        )
    return statuses


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope, "description": desc}
    for code, desc in {
        400: "invalid_json (malformed JSON)",
        401: "unauthorized",
        404: "not_found",
        422: "validation_error",
        429: "rate_limited",
        500: "internal_error",
        503: "unavailable",
    }.items()
}
