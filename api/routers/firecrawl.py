"""Firecrawl-compatible routes over Conveyor's crawl jobs: ``POST /v1/scrape`` and ``/v1/map``
(Conveyor's and Firecrawl's paths at once), Firecrawl's ``/v2/scrape``, ``/v2/map``,
``/v2/crawl`` and ``/v2/crawl/{id}`` (and ``/v1/crawl…``, which its legacy client calls).

A scrape is a single-page ``crawl`` job and a map a ``map`` job, created like every job
(``jobs.service.create_job``: validation, the SSRF guard, quotas) and waited for: the answer is
``{"success": true, "data": …}`` when the job finishes within ``timeout``; otherwise ``/v1``
answers 202 with the job (poll ``/v1/jobs/{id}``) and ``/v2`` answers 408 ``timed_out``, as
Firecrawl's own server does. Bodies take Firecrawl's camelCase or Conveyor's snake_case.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select

from api import access
from api.deps import CurrentPrincipal, Db
from api.routers.jobs import cancel_job, load_job
from api.routers.openai import CurrentPrincipal as WaitingPrincipal
from api.schemas import ERROR_RESPONSES
from api.submit import accepted, submit_job, submit_job_now
from api.views import ensure_result_available
from common.errors import Conflict, ConveyorError, ErrorCode, NotFound
from common.timeutil import isoformat_z
from crawler import compat
from crawler import repository as repo
from jobs.views import job_to_dict
from store.db import read_session
from store.jobs import ACTIVE, TERMINAL, JobStatus
from store.models import Job, ResultItem
from store.orgs import Principal

router = APIRouter(
    tags=["firecrawl"], responses=ERROR_RESPONSES, dependencies=[access.requires_group("crawls")]
)

#: Documents per crawl-status page (the rest follows ``next``).
STATUS_PAGE_SIZE = 100
#: At most this many URLs in ``/v2/crawl/{id}/errors`` (``/v1/jobs/{id}/errors`` pages them all).
MAX_LISTED_ERRORS = 10_000
_WAITS: dict[int | str, dict[str, Any]] = {
    200: {"description": "`{success: true, data}`: the job finished within `timeout`."},
    202: {"description": "(`/v1`) the job did not finish within `timeout`: the job."},
    402: {"description": "quota_exceeded"},
    408: {"description": "timed_out (on `/v2`) the job did not finish within `timeout`."},
    502: {"description": "scrape_failed the page could not be fetched or converted."},
}


async def _wait(principal: Principal, kind: str, payload: dict[str, Any], timeout_ms: int) -> Job:
    """Create the job (committed and sent), then wait for it until ``timeout_ms`` has passed."""
    job, _ = await run_in_threadpool(submit_job_now, principal, kind, payload)
    deadline = time.monotonic() + timeout_ms / 1000
    pause = 0.02
    while job.status not in TERMINAL and time.monotonic() < deadline:
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 1.5, 0.25)
        job = await run_in_threadpool(_reload, job.id)
    return job


def _reload(job_id: str) -> Job:
    with read_session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"Job {job_id!r} not found.")
        return job


def _first_result(job_id: str) -> dict[str, Any]:
    with read_session() as session:
        data = session.scalar(
            select(ResultItem.data)
            .where(ResultItem.job_id == job_id)
            .order_by(ResultItem.seq)
            .limit(1)
        )
    return dict(data or {})


def _unfinished(request: Request, job: Job, what: str) -> JSONResponse:
    """The job outlived the caller's ``timeout``: 202 with the job on ``/v1``, else 408."""
    if request.url.path.startswith("/v1/"):
        response = accepted(job)
        body = {"success": True, **job_to_dict(job)}
        return JSONResponse(body, status_code=202, headers=dict(response.headers))
    raise ConveyorError(
        f"The {what} did not finish within the timeout; poll /v1/jobs/{job.id}.",
        code=ErrorCode.TIMED_OUT,
        status_code=408,
        details={"job_id": job.id},
    )


def _failed(job: Job, what: str) -> ConveyorError:
    error = job.error or {"code": job.status, "message": f"The job was {job.status}."}
    return ConveyorError(
        f"The {what} failed: {error.get('message')}",
        code=ErrorCode.SCRAPE_FAILED,
        status_code=502,
        details={"job_id": job.id, "error": error},
    )


@router.post(
    "/v1/scrape",
    summary="Scrape one page (synchronous; Firecrawl-compatible)",
    responses=_WAITS,
)
@router.post("/v2/scrape", summary="Scrape one page (Firecrawl v2)", include_in_schema=False)
async def scrape(
    body: compat.ScrapeBody, request: Request, principal: WaitingPrincipal
) -> JSONResponse:
    job = await _wait(principal, "crawl", body.crawl_input(), body.timeout)
    if job.status not in TERMINAL:
        return _unfinished(request, job, "scrape")
    if job.status != JobStatus.COMPLETED:
        raise _failed(job, "scrape")
    record = await run_in_threadpool(_first_result, job.id)
    data = compat.document(record, body.format_names())
    return JSONResponse({"success": True, "data": data})


@router.post(
    "/v1/map",
    summary="List a site's URLs, fast (Firecrawl-compatible)",
    responses=_WAITS,
)
@router.post("/v2/map", summary="List a site's URLs (Firecrawl v2)", include_in_schema=False)
async def map_site(
    body: compat.MapBody, request: Request, principal: WaitingPrincipal
) -> JSONResponse:
    job = await _wait(principal, "map", body.map_input(), body.timeout + 2_000)
    if job.status not in TERMINAL:
        return _unfinished(request, job, "map")
    if job.status != JobStatus.COMPLETED:
        raise _failed(job, "map")
    links = list((await run_in_threadpool(_first_result, job.id)).get("links", []))
    return JSONResponse({"success": True, "data": {"links": links}, "links": links})


def _status_url(request: Request, job_id: str) -> str:
    version = "v1" if request.url.path.startswith("/v1/") else "v2"
    return f"{str(request.base_url).rstrip('/')}/{version}/crawl/{job_id}"


@router.post(
    "/v2/crawl",
    summary="Start a site crawl (Firecrawl v2)",
    responses={402: {"description": "quota_exceeded"}},
)
@router.post("/v1/crawl", include_in_schema=False)
def start_crawl(
    body: compat.CrawlBody, request: Request, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    job = submit_job(db, principal, "crawl", body.crawl_input())
    return {"success": True, "id": job.id, "url": _status_url(request, job.id)}


def _crawl_job(db: Db, principal: Principal, job_id: str) -> Job:
    job = load_job(db, principal, job_id)
    if job.kind != "crawl":
        raise NotFound(f"Crawl {job_id!r} not found.")
    return job


@router.get("/v2/crawl/{job_id}", summary="A crawl's status and pages (Firecrawl v2)")
@router.get("/v1/crawl/{job_id}", include_in_schema=False)
def crawl_status(
    job_id: str,
    request: Request,
    principal: CurrentPrincipal,
    db: Db,
    after: Annotated[int, Query(ge=0, description="From `next`: pages after this one.")] = 0,
) -> dict[str, Any]:
    job = _crawl_job(db, principal, job_id)
    ensure_result_available(job, partial_ok=True)
    rows = repo.list_results(db, job.id, after_seq=after, limit=STATUS_PAGE_SIZE)
    formats = compat.formats_of(job.input)
    progress = job.progress or {}
    crawled = int(progress.get("pages_crawled", 0))
    budget = int(job.input.get("max_pages") or crawled)
    total = max(crawled, min(int(progress.get("pages_discovered", 0)), budget))
    more = len(rows) == STATUS_PAGE_SIZE
    return {
        "success": True,
        "status": compat.STATUS_WORDS[job.status],
        "total": total,
        "completed": crawled,
        "creditsUsed": crawled,
        "expiresAt": job_to_dict(job)["expires_at"],
        "next": f"{_status_url(request, job.id)}?after={rows[-1].seq}" if more else None,
        "data": [compat.document(row.data or {}, formats) for row in rows],
    }


@router.get("/v2/crawl/{job_id}/errors", summary="A crawl's failed and robots-blocked URLs")
@router.get("/v1/crawl/{job_id}/errors", include_in_schema=False)
def crawl_errors(job_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    job = _crawl_job(db, principal, job_id)
    errors: list[dict[str, Any]] = []
    blocked: list[str] = []
    after = 0
    while len(errors) + len(blocked) < MAX_LISTED_ERRORS:
        rows = repo.list_problems(db, job.id, after_id=after, limit=500)
        for row in rows:
            if row.reason == "robots_blocked":
                blocked.append(row.url)
            else:
                errors.append(
                    {
                        "id": str(row.id),
                        "timestamp": isoformat_z(row.updated_at),
                        "url": row.url,
                        "code": row.reason,
                        "error": row.message or row.reason or "failed",
                    }
                )
        if len(rows) < 500:
            break
        after = rows[-1].id
    return {"success": True, "errors": errors, "robotsBlocked": blocked}


@router.delete("/v2/crawl/{job_id}", summary="Cancel a crawl (Firecrawl v2)")
@router.delete("/v1/crawl/{job_id}", include_in_schema=False)
def cancel_crawl(job_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    job = _crawl_job(db, principal, job_id)
    if job.status in ACTIVE:
        cancel_job(db, job)
    if job.status != JobStatus.CANCELLED:
        raise Conflict(f"The crawl already {job.status}; there is nothing to cancel.")
    return {"success": True, "status": "cancelled"}
