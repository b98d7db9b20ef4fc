"""``/v1/audit-log``: who changed what, and who was refused (``admin`` scope)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from access import audit
from api import access
from api.deps import CurrentPrincipal, Db
from api.schemas import ERROR_RESPONSES

router = APIRouter(
    prefix="/v1/audit-log",
    tags=["audit"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires("admin")],
)


class Actor(BaseModel):
    member: str | None
    key_id: str | None


class Target(BaseModel):
    type: str | None
    id: str | None


class AuditOut(BaseModel):
    id: str
    org_id: str | None
    actor: Actor
    action: str = Field(description="`<group>.<verb>`, e.g. `resources.delete`; `….denied`.")
    target: Target
    request_id: str | None
    ip: str | None
    user_agent: str | None
    status: int
    created_at: str


class AuditList(BaseModel):
    data: list[AuditOut]
    next_cursor: str | None


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)
    action: str | None = Field(default=None, max_length=100)
    actor: str | None = Field(default=None, max_length=64, description="A member or key id.")
    target_id: str | None = Field(default=None, max_length=200)
    created_after: datetime | None = Field(default=None, description="Exclusive bound.")


@router.get("", response_model=AuditList, summary="The audit log (newest first, cursor pages)")
def list_audit(
    principal: CurrentPrincipal, db: Db, query: Annotated[AuditQuery, Query()]
) -> dict[str, Any]:
    flt = audit.AuditFilter(
        action=query.action,
        actor=query.actor,
        target_id=query.target_id,
        created_after=query.created_after,
    )
    rows, cursor = audit.list_records(
        db, principal.org_id, flt, limit=query.limit, cursor=query.cursor
    )
    return {"data": [audit.view(r) for r in rows], "next_cursor": cursor}
