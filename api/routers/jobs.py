"""``/v1/jobs``: list, get, cancel, delete and download results of the caller's jobs."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import Field
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from api import access
from api.contract import bearer_token
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


def poll_job(token: str, job_id: str, request: HTTPConnection) -> bytes:
    """The polling hot path's work, in one worker-thread hop and one query (no transaction
    around it): authentication (key, membership of the selected organisation) and the job's
    row together, the route's scope check (``api.access``), and the view serialised once,
    without a second validation pass. Raises the route's 401/403/404."""
    with read_session() as session:
        principal, job = (
            orgs.job_for_key(session, token, job_id, access.selected_org(request))
            if token and len(job_id) <= 64
            else (None, None)
        )
        if principal is None:  # the precise 401 (missing, unknown or revoked key)
            principal = authenticate(session, _credentials(token), request)
        access.authorize(principal, request)
        if job is None:
            raise NotFound(f"Job {job_id!r} not found.")
        view = job_to_dict(job)
    return json.dumps(view, separators=(",", ":")).encode()


def _credentials(token: str) -> HTTPAuthorizationCredentials | None:
    return HTTPAuthorizationCredentials(scheme="Bearer", credentials=token) if token else None


@router.get("/{job_id}", response_model=JobOut, summary="Get a job")
async def get_job(job_id: str, request: Request, credentials: Credentials) -> Response:
    """The polling hot path (``poll_job``; ``PollFastPath`` answers most polls before they
    reach the routing)."""
    token = credentials.credentials if credentials else ""
    body = await run_in_threadpool(poll_job, token, job_id, request)
    return Response(body, media_type="application/json")


_POLL_PATH = re.compile(r"^/v1/jobs/([^/]{1,64})$")


class PollFastPath:
    """ASGI: ``GET /v1/jobs/{id}`` with a bearer key, answered by ``poll_job`` without
    FastAPI's route matching and dependency resolution (the poll is the API's most frequent
    call). It sits inside the contract middlewares (request id, metrics, rate limit, body
    limit), so they apply as to the route; the route's declared scope is checked as there.
    Anything but a 200 (no key, a denial, a missing job, a query string, the store down) goes
    on to the route, which answers and audits it exactly as it would have."""

    def __init__(self, app: ASGIApp, api: Starlette) -> None:
        self.app = app
        self.api = api
        self._route: object | None = None

    def _poll_route(self) -> object | None:
        if self._route is None:
            for route in access.api_routes(self.api):  # type: ignore[arg-type]
                if route.endpoint is get_job:
                    self._route = route
        return self._route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (
            _POLL_PATH.match(scope["path"])
            if scope["type"] == "http" and scope["method"] == "GET"
            else None
        )
        token = bearer_token(scope) if match is not None and not scope["query_string"] else None
        route = self._poll_route() if token is not None else None
        if match is None or token is None or route is None:
            await self.app(scope, receive, send)
            return
        job_id = match.group(1)
        polled = {**scope, "route": route, "path_params": {"job_id": job_id}}
        try:
            body = await run_in_threadpool(poll_job, token, job_id, HTTPConnection(polled))
        except Exception:  # the route answers (and audits) it
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # what the metrics name the request by (as the router does)
        await Response(body, media_type="application/json")(polled, receive, send)


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
