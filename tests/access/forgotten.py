"""A router that forgot to declare its scope (``test_scope_walk``)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentPrincipal

router = APIRouter(prefix="/v1/forgotten")


@router.get("")
def read(principal: CurrentPrincipal) -> dict[str, str]:
    return {"org": principal.org_id}
