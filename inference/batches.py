"""OpenAI's Batch API over Conveyor's batch jobs (``inference`` jobs whose operation is
``batch``): the Batch object of a job, its output and error files, and the listing query.

A batch's id is its job's id. Its output file (``file-out-<job id>``: the lines that got a
response) and error file (``file-err-<job id>``: the lines that failed) are views of the job's
result rows, so they live and expire with the result (24 h). Functions here never commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from store import jobs as job_store
from store.models import Job

OUTPUT_PREFIX = "file-out-"
ERROR_PREFIX = "file-err-"
WINDOW_SECONDS = 24 * 3600

#: Conveyor's job status → OpenAI's batch status.
STATUSES: dict[str, str] = {
    "queued": "validating",
    "running": "in_progress",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


def _unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def is_batch(job: Job | None) -> bool:
    return job is not None and job.kind == "inference" and job.input.get("operation") == "batch"


def _file_sizes(job_id: str) -> tuple[int, int]:
    """Bytes of the output file and of the error file."""
    out = err = 0
    for data in _lines(job_id):
        if data.get("error") is None:
            out += len(_encode(data))
        else:
            err += len(_encode(data))
    return out, err


def _lines(job_id: str) -> Iterator[dict[str, Any]]:
    for item in job_store.iter_result_items(job_id):
        if item.data is not None and "custom_id" in item.data:
            yield item.data


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def file_lines(job_id: str, *, errors: bool) -> Iterator[bytes]:
    """The output file (lines with a response) or the error file (lines with an error)."""
    for data in _lines(job_id):
        if (data.get("error") is not None) == errors:
            yield _encode(data)


def batch_view(job: Job) -> dict[str, Any]:
    """The job as OpenAI's Batch object."""
    progress = job.progress or {}
    total = int(progress.get("requests_total", len(job.input.get("requests") or [])))
    status = STATUSES[job.status]
    completed = int(progress.get("requests_completed", 0))
    failed = int(progress.get("requests_failed", 0))
    output_id = error_id = None
    if job.status == "completed" and not job_store.result_gone(job):
        output_id = OUTPUT_PREFIX + job.id if completed or not failed else None
        error_id = ERROR_PREFIX + job.id if failed else None
    requests = job.input.get("requests") or [{}]
    error = job.error
    created = _unix(job.created_at) or 0
    return {
        "id": job.id,
        "object": "batch",
        "endpoint": job.input.get("endpoint") or requests[0].get("url"),
        "errors": (
            {"object": "list", "data": [{"code": error["code"], "message": error["message"]}]}
            if error
            else None
        ),
        "input_file_id": job.input.get("input_file_id"),
        "completion_window": "24h",
        "status": status,
        "output_file_id": output_id,
        "error_file_id": error_id,
        "created_at": created,
        "in_progress_at": _unix(job.started_at),
        "expires_at": created + WINDOW_SECONDS,
        "finalizing_at": _unix(job.completed_at) if status == "completed" else None,
        "completed_at": _unix(job.completed_at) if status == "completed" else None,
        "failed_at": _unix(job.completed_at) if status == "failed" else None,
        "expired_at": None,
        "cancelling_at": _unix(job.completed_at) if status == "cancelled" else None,
        "cancelled_at": _unix(job.completed_at) if status == "cancelled" else None,
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": job.input.get("metadata"),
    }


def output_file_job(file_id: str) -> tuple[str, bool] | None:
    """``(job id, is the error file)`` for a batch output file id, else None."""
    for prefix, errors in ((OUTPUT_PREFIX, False), (ERROR_PREFIX, True)):
        if file_id.startswith(prefix) and len(file_id) <= len(prefix) + 64:
            return file_id[len(prefix) :], errors
    return None


def output_file_view(job: Job, errors: bool) -> dict[str, Any] | None:
    """The File object of a completed batch's output (or error) file; None when it has none
    (the batch is not complete, its result expired or was deleted, or no line went there)."""
    if job.status != "completed" or job_store.result_gone(job):
        return None
    out_bytes, err_bytes = _file_sizes(job.id)
    size = err_bytes if errors else out_bytes
    if errors and not size:
        return None
    completed = _unix(job.completed_at) or 0
    return {
        "id": (ERROR_PREFIX if errors else OUTPUT_PREFIX) + job.id,
        "object": "file",
        "bytes": size,
        "created_at": completed,
        "expires_at": _unix(job.expires_at),
        "filename": f"batch_{job.id}_{'error' if errors else 'output'}.jsonl",
        "purpose": "batch_output",
        "status": "processed",
    }


def list_batches(
    session: Session, org_id: str, *, after: str | None, limit: int
) -> tuple[list[Job], bool]:
    """The organisation's batch jobs, newest first, after the batch ``after``; and whether
    there are more."""
    query = (
        select(Job)
        .where(
            Job.org_id == org_id,
            Job.kind == "inference",
            Job.input["operation"].as_string() == "batch",
        )
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit + 1)
    )
    if after:
        anchor = session.scalar(select(Job.created_at).where(Job.id == after, Job.org_id == org_id))
        if anchor is not None:
            query = query.where(
                or_(Job.created_at < anchor, and_(Job.created_at == anchor, Job.id < after))
            )
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit
