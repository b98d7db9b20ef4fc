"""``/v1/usage``: the organisation's plan and what it used in the current period."""

from __future__ import annotations

from fastapi import APIRouter

from api import access
from api.deps import CurrentPrincipal, Db
from api.schemas import ERROR_RESPONSES
from assistants import service as assistants
from plans import service as plans
from plans.schemas import InstanceTokens, UsageReport

router = APIRouter(
    prefix="/v1/usage",
    tags=["usage"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("billing")],
)


@router.get("", response_model=UsageReport, summary="Usage of the current period against the plan")
def get_usage(principal: CurrentPrincipal, db: Db) -> UsageReport:
    report = plans.usage_report(db, principal.org_id)
    report.assistants = [
        InstanceTokens.model_validate(row)
        for row in assistants.usage_by_instance(db, principal.org_id)
    ]
    return report
