"""Pydantic shapes of the resources API (requests) and of the resource jobs' inputs."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from celery.schedules import crontab
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ResourceType = Literal["postgres", "redis", "blob", "volume"]
Tier = Literal["shared", "dedicated"]
ResourceStatus = Literal["provisioning", "ready", "degraded", "failed", "deleting", "deleted"]
BackupStatus = Literal["pending", "running", "completed", "failed"]
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_PREFIX = re.compile(r"^[A-Z][A-Z0-9_]{0,30}$")


def parse_cron(expr: str) -> crontab:
    """A 5-field cron expression (minute hour day-of-month month day-of-week)."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError("backup_schedule must be a 5-field cron expression, e.g. '0 3 * * *'")
    minute, hour, dom, month, dow = fields
    try:
        return crontab(
            minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow
        )
    except (ValueError, KeyError) as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {exc}") from exc


def _check_schedule(value: str | None) -> str | None:
    if value is not None:
        parse_cron(value)
    return value


def _check_name(value: str | None) -> str | None:
    if value is not None and not _NAME.match(value):
        raise ValueError(
            "name: lowercase letters, digits and '-', at most 63, starting alphanumeric"
        )
    return value


MaxmemoryPolicy = Literal[
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]


class Limits(BaseModel):
    """Which limit applies to which type/tier is ``resources.service.LIMITS``; PATCH applies
    them to the running server (a ``provision`` job)."""

    model_config = ConfigDict(extra="forbid")

    connection_limit: int | None = Field(default=None, ge=1, le=1000)
    size_bytes: int | None = Field(default=None, ge=1)
    maxmemory: str | None = Field(default=None, pattern=r"^[0-9]+(kb|mb|gb)?$")
    maxmemory_policy: MaxmemoryPolicy | None = None


class ResourceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ResourceType
    tier: Tier = "shared"
    name: str
    limits: Limits = Field(default_factory=Limits)
    backup_schedule: str | None = Field(default=None, description="5-field cron, UTC.")
    backup_retention_days: int | None = Field(
        default=None, ge=1, description="Days a backup is kept (at most the plan's maximum)."
    )
    backup_retention_count: int | None = Field(
        default=None,
        ge=1,
        description="Completed backups kept, newest first (default and cap: the plan's maximum).",
    )

    _name = field_validator("name")(_check_name)
    _schedule = field_validator("backup_schedule")(_check_schedule)


class ResourcePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: Limits | None = None
    backup_schedule: str | None = None
    backup_retention_days: int | None = Field(default=None, ge=1)
    backup_retention_count: int | None = Field(default=None, ge=1)

    _schedule = field_validator("backup_schedule")(_check_schedule)


class RestoreRequest(BaseModel):
    """``backup_id`` (every tier) or ``target_time``: PITR on dedicated postgres; elsewhere the
    newest verified backup taken at or before it (answered as ``restored_to``, ``backup_id``)."""

    model_config = ConfigDict(extra="forbid")

    backup_id: str | None = None
    target_time: datetime | None = None
    name: str | None = None

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _one_source(self) -> RestoreRequest:
        if (self.backup_id is None) == (self.target_time is None):
            raise ValueError("give exactly one of backup_id or target_time")
        if self.target_time is not None and self.target_time.tzinfo is None:
            raise ValueError("target_time needs a timezone (e.g. 2026-01-01T10:00:00Z)")
        return self


class BranchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    from_time: datetime | None = None

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _aware(self) -> BranchRequest:
        if self.from_time is not None and self.from_time.tzinfo is None:
            raise ValueError("from_time needs a timezone")
        return self


class PresignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=1024)
    method: Literal["GET", "PUT"] = "GET"
    expires_in: int = Field(default=3600, ge=1, le=7 * 24 * 3600)


class BindingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource_id: str
    env_prefix: str | None = Field(
        default=None,
        description="Prepended to every variable name: DATABASE_URL → <P>_DATABASE_URL.",
    )

    @field_validator("env_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not _PREFIX.match(value):
            raise ValueError(
                "env_prefix: uppercase letters, digits and '_', starting with a letter"
            )
        return value


class ResourceListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = None
    status: str | None = Field(default=None, description="Comma-separated statuses.")
    type: str | None = Field(default=None, description="Comma-separated types.")
    created_after: datetime | None = None
    created_before: datetime | None = None
    sort: Literal["-created_at", "created_at"] = "-created_at"


class BackupListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = None


# ----------------------------------------------------------------------------- job inputs ---
class ProvisionJobInput(BaseModel):
    """``provision`` jobs: create (fresh, or from a backup / a point in time / a branch),
    delete, rotate credentials, apply changed ``limits`` to the running server (``previous``:
    what to go back to when they cannot be applied)."""

    resource_id: str
    operation: Literal["create", "delete", "rotate", "limits"]
    purge_backups: bool = False
    limits: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None


class BackupJobInput(BaseModel):
    backup_id: str
    operation: Literal["backup", "verify"] = "backup"


class RestoreJobInput(BaseModel):
    """``restore`` jobs fill a new resource from ``source_id``'s backup, point in time or
    current data (branch)."""

    resource_id: str
    source_id: str
    backup_id: str | None = None
    target_time: datetime | None = None
    branch: bool = False

    def describe(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
