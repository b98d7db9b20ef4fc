"""``/v1/keys``: list, create, rotate and revoke API keys (shown once, stored hashed), each
with scopes, an optional expiry and optional allowed addresses."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from access import service
from access.scopes import ALL_SCOPES
from api import access
from api.deps import CurrentPrincipal, Db
from api.schemas import ERROR_RESPONSES

router = APIRouter(
    prefix="/v1/keys",
    tags=["keys"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("keys")],
)

_SCOPES_HELP = (
    "`<group>:read` / `<group>:write` (write implies read) and `admin`; omitted: every scope "
    f"of the calling key. Scopes: {', '.join(ALL_SCOPES)}."
)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    scopes: list[str] | None = Field(default=None, max_length=64, description=_SCOPES_HELP)
    expires_at: datetime | None = Field(
        default=None, description="After this instant the key answers 401 (ISO 8601)."
    )
    allowed_cidrs: list[str] | None = Field(
        default=None,
        max_length=32,
        description="Client addresses allowed (e.g. `10.0.0.0/8`); others get 403.",
    )
    member: str | None = Field(
        default=None,
        max_length=200,
        description="Owners and admins: create the key for another member (id or name).",
    )

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        out = []
        for cidr in value:
            try:
                out.append(str(ipaddress.ip_network(cidr, strict=False)))
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR (e.g. 10.0.0.0/8)") from exc
        return out


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(
        default=24 * 3600,
        ge=0,
        le=30 * 24 * 3600,
        description="How long the old secret keeps working (0: stops at once).",
    )


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The key's first characters, e.g. `cvy_live_AbCd`.")
    last4: str
    masked: str = Field(description="`prefix…last4`: enough to recognise a key, not to use it.")
    scopes: list[str]
    expires_at: str | None
    allowed_cidrs: list[str] | None
    last_used_at: str | None = Field(description="Updated at most once a minute.")
    member: str | None = Field(description="The member the key acts for.")
    created_by: str | None = Field(description="The member that created it.")
    created_at: str
    revoked_at: str | None = Field(description="Set when revoked or rotated (the grace end).")


class KeyCreated(KeyOut):
    key: str = Field(description="The full key. Shown only in this response; store it now.")


class KeyList(BaseModel):
    data: list[KeyOut]
    next_cursor: str | None


class KeyListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


@router.get("", response_model=KeyList, summary="List active API keys (prefix and last 4 only)")
def list_keys(
    principal: CurrentPrincipal, db: Db, query: Annotated[KeyListQuery, Query()]
) -> dict[str, object]:
    page, cursor = service.list_keys(db, principal, limit=query.limit, cursor=query.cursor)
    return {"data": [service.key_view(k) for k in page], "next_cursor": cursor}


@router.post(
    "",
    status_code=201,
    response_model=KeyCreated,
    summary="Create an API key (the full key is shown once; never stronger than the caller's)",
)
def create_key(
    request: Request, principal: CurrentPrincipal, db: Db, body: KeyCreate | None = None
) -> JSONResponse:
    spec = service.KeySpec(**body.model_dump()) if body else service.KeySpec()
    new = service.create_key(db, principal, spec)
    access.audit_target(request, "key", new.key.id)
    return JSONResponse({**service.key_view(new.key), "key": new.raw}, status_code=201)


@router.post(
    "/{key_id}/rotate",
    status_code=201,
    response_model=KeyCreated,
    summary="Rotate: a new secret; the old one works for `grace_seconds` (default 24 h)",
)
def rotate_key(
    key_id: str,
    request: Request,
    principal: CurrentPrincipal,
    db: Db,
    body: KeyRotate | None = None,
) -> JSONResponse:
    grace = (body or KeyRotate()).grace_seconds
    new = service.rotate_key(db, principal, key_id, grace)
    access.audit_target(request, "key", key_id)
    return JSONResponse(
        {**service.key_view(new.key), "key": new.raw, "replaces": key_id}, status_code=201
    )


@router.delete(
    "/{key_id}", status_code=204, summary="Revoke an API key (effective on the next request)"
)
def revoke_key(key_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    service.revoke_key(db, principal, key_id)
    return Response(status_code=204)
