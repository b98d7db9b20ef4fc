"""``/v1/jobs``: list, get, cancel, delete and download results of the caller's jobs."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import access
from api.deps import Credentials, CurrentPrincipal, Db, authenticate
from api.schemas import ERROR_RESPONSES, JobOut, ListQuery, Page, parse_statuses
from api.views import render_result
from common.errors import NotFound, ValidationFailed
from config.queues import KINDS
from jobs.service import emit_job_event
from jobs.views import job_to_dict
from store import jobs as job_store
from store import orgs
from store.db import read_session
from store.jobs import ACTIVE, ALL_STATUSES, JobFilter, JobStatus
from store.models import Job
from store.orgs import Principal

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("jobs")],
)


class JobListQuery(ListQuery):
    status: str | None = Field(
        default=None, description="Comma-separated: queued,running,completed,failed,cancelled"
    )
    kind: str | None = Field(default=None, max_length=40, description="One job kind.")


def _statuses(raw: str | None) -> tuple[str, ...]:
    return parse_statuses(raw, ALL_STATUSES)


def _kind(raw: str | None) -> str | None:
    """The ``kind`` filter; 422 naming the allowed kinds, like an unknown status."""
    if raw is None or raw in KINDS:
        return raw
    raise ValidationFailed(
        f"Unknown kind {raw!r}; use one of {', '.join(KINDS)}.",
        details=[{"loc": ["query", "kind"], "msg": "unknown kind", "type": "enum"}],
    )


@router.get("", response_model=Page[JobOut], summary="List jobs (cursor pagination)")
def list_jobs(
    principal: CurrentPrincipal, db: Db, query: Annotated[JobListQuery, Query()]
) -> dict[str, object]:
    flt = JobFilter(
        statuses=_statuses(query.status),
        kind=_kind(query.kind),
        created_after=query.created_after,
        created_before=query.created_before,
        descending=query.sort == "-created_at",
    )
    rows, next_cursor = job_store.list_jobs(
        db, principal.org_id, flt, limit=query.limit, cursor=query.cursor
    )
    return {"data": [job_to_dict(job) for job in rows], "next_cursor": next_cursor}


def load_job(db: Session, principal: Principal, job_id: str) -> Job:
    job = job_store.get_job(db, principal.org_id, job_id) if len(job_id) <= 64 else None
    if job is None:
        raise NotFound(f"Job {job_id!r} not found.")
    return job


@router.get("/{job_id}", response_model=JobOut, summary="Get a job")
async def get_job(job_id: str, request: Request, credentials: Credentials) -> Response:
    """The polling hot path: authentication (key, membership of the selected organisation),
    the lookup and serialisation in one worker-thread hop and one query (no transaction around
    it), answered without a second validation pass; the scope check is ``api.access``'s."""
    org_id = access.selected_org(request)

    def load() -> bytes:
        token = credentials.credentials if credentials else ""
        with read_session() as session:
            principal, job = (
                orgs.job_for_key(session, token, job_id, org_id)
                if token and len(job_id) <= 64
                else (None, None)
            )
            if principal is None:
                principal = authenticate(session, credentials, request)  # the precise 401
            access.authorize(principal, request)
            if job is None:
                raise NotFound(f"Job {job_id!r} not found.")
            view = job_to_dict(job)
        return json.dumps(view, separators=(",", ":")).encode()

    return Response(await run_in_threadpool(load), media_type="application/json")


def cancel_job(db: Db, job: Job) -> bool:
    """Cancel a queued or running job (compare-and-set: loses cleanly to a finishing worker)."""
    won = job_store.transition(db, job.id, to=JobStatus.CANCELLED, from_=list(ACTIVE))
    if won:
        emit_job_event(db, "job.cancelled", job.id)
    db.refresh(job)
    return won


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a job")
def cancel(job_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, object]:
    job = load_job(db, principal, job_id)
    if job.status in ACTIVE:
        cancel_job(db, job)
    return job_to_dict(job)


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    summary="Cancel a running job, or delete a finished job's result (idempotent)",
)
def delete_job(job_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    job = load_job(db, principal, job_id)
    if job.status in ACTIVE and cancel_job(db, job):
        return Response(status_code=204)
    job_store.delete_results(db, job.id)
    return Response(status_code=204)


@router.get(
    "/{job_id}/result",
    summary="Download the result (streamed)",
    responses={
        200: {"description": "The result (JSON, NDJSON or a kind-specific format)."},
        409: {"description": "not_ready"},
        410: {"description": "gone"},
    },
)
def get_result(
    job_id: str,
    request: Request,
    principal: CurrentPrincipal,
    db: Db,
    format: Annotated[
        Literal["json", "markdown", "html", "text", "links", "screenshot"] | None, Query()
    ] = None,
) -> Response:
    job = load_job(db, principal, job_id)
    return render_result(job, request)
