"""Job creation from HTTP: every "create a job" route calls ``jobs.service.create_job`` on the
request's session (validation, quota, insert, outbox) and answers with :func:`accepted`.

The request's session commits once, before the response is sent, and the job's message leaves
after that commit (``workers.outbox``); a broker that refuses it fails the job and answers 503.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api import access
from jobs.service import create_job
from jobs.views import job_to_dict
from store.db import session_scope
from store.models import Job
from store.orgs import Principal
from webhooks.service import job_webhook_view
from workers import outbox


def submit_job(db: Session, principal: Principal, kind: str, payload: dict[str, Any]) -> Job:
    """Create a ``kind`` job for the caller on the request's session."""
    return create_job(db, kind, principal.org_id, payload)


def submit_job_now(
    principal: Principal,
    kind: str,
    payload: dict[str, Any],
    *,
    webhook: bool = True,
    request: Request | None = None,
) -> tuple[Job, Any]:
    """For async routes that hold no request session: the same creation in a transaction of its
    own, committed (and the job sent) before returning; also returns the per-job webhook view
    (``webhook=False``: a caller that answers with the job's output, not the job, skips it).
    With ``request``, the call's audit record is written in the same transaction."""
    with session_scope() as db:
        db.info[outbox.ON_SEND_FAILURE] = "reject"
        job = create_job(db, kind, principal.org_id, payload)
        if request is not None:
            access.audit_in(db, request, principal)
        view = job_webhook_view(db, job.id, with_secret=True) if webhook else None
    return job, view


def accepted_object(view: dict[str, Any], location: str) -> JSONResponse:
    """202 Accepted with an object whose work was queued, and where to poll it (every route
    that answers 202 answers with this)."""
    return JSONResponse(view, status_code=202, headers={"Location": location})


def accepted(job: Job, db: Session | None = None, *, webhook: Any = None) -> JSONResponse:
    """202 with the job (and its webhook's secret, shown only here)."""
    body = job_to_dict(job)
    if db is not None:
        webhook = job_webhook_view(db, job.id, with_secret=True)
    if webhook is not None:
        body["webhook"] = webhook
    return accepted_object(body, f"/v1/jobs/{job.id}")
