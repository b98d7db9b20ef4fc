"""How a job is shown (the API, webhook payloads and the CLI all use this one view).

A kind's extra top-level fields are declared on the kind (``config.queues.KINDS[kind].extras``),
so every process shows a job the same way.
"""

from __future__ import annotations

from typing import Any

from common.timeutil import isoformat_z
from config import get_settings
from config.queues import KINDS, resolve
from store.models import Job


def job_links(job_id: str) -> dict[str, str]:
    """``self``, ``result``, and ``flower``: the job's first task in Flower (its task id is the
    job's id)."""
    return {
        "self": f"/v1/jobs/{job_id}",
        "result": f"/v1/jobs/{job_id}/result",
        "flower": f"{flower_url()}/task/{job_id}",
    }


def flower_url() -> str:
    settings = get_settings()
    return settings.flower_url or f"http://127.0.0.1:{settings.flower_port}"


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
    declared = KINDS.get(job.kind)
    if declared is not None and declared.extras:
        out.update(resolve(declared.extras)(job))
    return out
