"""``POST /v1/diagnostics/sleep``: a cooperative sleep job for checking the platform."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import access
from api.deps import CurrentPrincipal, Db
from api.schemas import ERROR_RESPONSES, JobOut
from api.submit import accepted, submit_job
from diagnostics.schemas import SleepInput

router = APIRouter(
    prefix="/v1/diagnostics",
    tags=["diagnostics"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("jobs")],
)


@router.post(
    "/sleep", status_code=202, response_model=JobOut, summary="Submit a diagnostics sleep job"
)
def create_sleep(body: SleepInput, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    job = submit_job(db, principal, "diagnostics", body.model_dump(mode="json"))
    return accepted(job, db)
