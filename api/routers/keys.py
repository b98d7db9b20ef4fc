"""``/v1/keys``: list, create and revoke the organisation's API keys (shown once, stored hashed)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from api.deps import CurrentPrincipal, Db
from api.schemas import ERROR_RESPONSES
from common.errors import NotFound
from common.timeutil import isoformat_z
from store import orgs, pagination
from store.models import ApiKey

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=ERROR_RESPONSES)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The key's first characters, e.g. `cvy_live_AbCd`.")
    last4: str
    masked: str = Field(description="`prefix…last4`: enough to recognise a key, not to use it.")
    created_at: str
    revoked_at: str | None


class KeyCreated(KeyOut):
    key: str = Field(description="The full key. Shown only in this response; store it now.")


class KeyList(BaseModel):
    data: list[KeyOut]
    next_cursor: str | None


class KeyListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


def _view(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "last4": key.last4,
        "masked": f"{key.prefix}…{key.last4}",
        "created_at": isoformat_z(key.created_at),
        "revoked_at": isoformat_z(key.revoked_at),
    }


@router.get("", response_model=KeyList, summary="List active API keys (prefix and last 4 only)")
def list_keys(
    principal: CurrentPrincipal, db: Db, query: Annotated[KeyListQuery, Query()]
) -> dict[str, object]:
    stmt = select(ApiKey).where(ApiKey.org_id == principal.org_id, ApiKey.revoked_at.is_(None))
    page, cursor = pagination.list_page(db, stmt, ApiKey, limit=query.limit, cursor=query.cursor)
    return {"data": [_view(k) for k in page], "next_cursor": cursor}


@router.post(
    "",
    status_code=201,
    response_model=KeyCreated,
    summary="Create an API key (the full key is shown once)",
)
def create_key(principal: CurrentPrincipal, db: Db, body: KeyCreate | None = None) -> JSONResponse:
    new = orgs.create_key(db, principal.org_id, name=(body.name if body else ""))
    db.flush()
    return JSONResponse({**_view(new.key), "key": new.raw}, status_code=201)


@router.delete(
    "/{key_id}", status_code=204, summary="Revoke an API key (effective on the next request)"
)
def revoke_key(key_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    if len(key_id) > 64 or not orgs.revoke_key(db, principal.org_id, key_id):
        raise NotFound("API key not found.")
    return Response(status_code=204)
