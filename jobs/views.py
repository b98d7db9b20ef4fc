"""How a job is shown (the API, webhook payloads and the CLI all use this one view).

A kind's extra top-level fields are declared on the kind (``config.queues.KINDS[kind].extras``),
so every process shows a job the same way.
"""

from __future__ import annotations

from typing import Any

from common.timeutil import isoformat_z
from config import get_settings
from config.queues import KINDS, resolve
from store.jobs import result_gone
from store.models import Job


def job_links(job: Job) -> dict[str, str]:
    """``self``, ``result`` while the result can still be downloaded, and ``flower``: the job's
    first task in Flower (its task id is the job's id)."""
    links = {"self": f"/v1/jobs/{job.id}"}
    if not result_gone(job):
        links["result"] = f"/v1/jobs/{job.id}/result"
    links["flower"] = f"{flower_url()}/task/{job.id}"
    return links


def flower_url() -> str:
    settings = get_settings()
    return settings.flower_url or f"http://127.0.0.1:{settings.flower_port}"


def _expires_at(job: Job) -> str | None:
    """When the result goes (or went): ``expires_at``, or the deletion time if it came first."""
    deleted = job.result_deleted_at
    if deleted is not None and (job.expires_at is None or deleted < job.expires_at):
        return isoformat_z(deleted)
    return isoformat_z(job.expires_at)


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
        "expires_at": _expires_at(job),
        "links": job_links(job),
    }
    declared = KINDS.get(job.kind)
    if declared is not None and declared.extras:
        out.update(resolve(declared.extras)(job))
    return out
