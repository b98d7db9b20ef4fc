"""How jobs are shown and how their results are downloaded, with per-kind hooks.

Domain routers register ``job_extras[kind]`` (extra top-level fields, e.g. Syttra's crawl
counters) and ``result_renderers[kind]`` (e.g. crawls stream Markdown while they run).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from common.errors import Gone, NotFound, NotReady
from common.timeutil import isoformat_z
from store import jobs as job_store
from store.jobs import TERMINAL, JobStatus
from store.models import Job

JobExtras = Callable[[Job], dict[str, Any]]
ResultRenderer = Callable[[Job, Request], Response]

job_extras: dict[str, JobExtras] = {}
result_renderers: dict[str, ResultRenderer] = {}


def job_links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "result": f"/v1/jobs/{job_id}/result"}


def job_to_dict(job: Job) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "input": job.input,
        "progress": job.progress or {},
        "error": job.error,
        "attempts": job.attempts,
        "created_at": isoformat_z(job.created_at),
        "started_at": isoformat_z(job.started_at),
        "completed_at": isoformat_z(job.completed_at),
        "expires_at": isoformat_z(job.expires_at),
        "links": job_links(job.id),
    }
    extras = job_extras.get(job.kind)
    if extras is not None:
        out.update(extras(job))
    return out


def ensure_result_available(job: Job, *, partial_ok: bool = False) -> None:
    """Raise the contract's error when a job's result cannot be read now."""
    if job_store.result_gone(job):
        raise Gone("The result has expired or was deleted (results are kept 24 h).")
    if job.status not in TERMINAL and not partial_ok:
        raise NotReady(f"The job is {job.status}; its result is not ready yet.")


def _ndjson(job_id: str) -> Iterator[bytes]:
    for item in job_store.iter_result_items(job_id):
        record = item.data if item.data is not None else {"name": item.name, "body": item.body}
        yield json.dumps(record, separators=(",", ":")).encode() + b"\n"


def default_result(job: Job, request: Request) -> Response:
    """A small result as JSON; a result of many items as NDJSON, streamed."""
    ensure_result_available(job)
    items = job_store.iter_result_items(job.id, batch=2)
    first = next(items, None)
    second = next(items, None)
    if first is None:
        if job.status == JobStatus.COMPLETED:
            return JSONResponse({})
        raise NotFound(f"The job {job.status} and has no result.")
    if second is None and first.name == "result" and first.data is not None:
        return JSONResponse(first.data)
    return StreamingResponse(_ndjson(job.id), media_type="application/x-ndjson")


def render_result(job: Job, request: Request) -> Response:
    return result_renderers.get(job.kind, default_result)(job, request)
