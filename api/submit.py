"""Job creation from HTTP: the one path every "create a job" route takes.

It validates the input against the kind's model, creates the row, commits, and only then
enqueues (tasks.runner.create_and_enqueue — the same path as Python's ``submit``).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api.views import job_to_dict
from store.db import session_scope
from store.models import Job
from store.orgs import Principal
from tasks.runner import create_and_enqueue
from webhooks.service import job_webhook_view


def submit_job(principal: Principal, kind: str, payload: dict[str, Any]) -> Job:
    return create_and_enqueue(kind, principal.org_id, payload)


def accepted(job: Job, session: Session | None = None) -> JSONResponse:
    """202 with the job and a Location header."""
    if session is not None:
        session.refresh(job)
    body = job_to_dict(job)
    with session_scope() as db:  # a per-job webhook's secret is shown only here
        webhook = job_webhook_view(db, job.id, with_secret=True)
    if webhook is not None:
        body["webhook"] = webhook
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})
