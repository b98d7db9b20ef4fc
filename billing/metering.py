"""Usage events of finished jobs, written in the transaction that ended the job.

``store.jobs`` calls :func:`record_job_usage` (declared in ``config.queues.JOB_TERMINAL_HOOKS``)
right after the compare-and-set transition to a terminal state won; as only one caller ever wins
that transition, and every event's idempotency key names the job, a job is metered exactly once,
however often its message was delivered. What is metered comes from the job's row as the
transition left it:

* ``jobs`` (1, by kind) for a job that started;
* ``pages_crawled`` from a crawl's ``pages_crawled`` counter, ``rendered`` (``pages_rendered``)
  and ``static`` (the rest);
* ``tokens_in`` / ``tokens_out`` (by model) and ``gpu_seconds`` (by the worker's GPU type,
  ``CONVEYOR_BILLING_GPU_TYPE``) from an inference job's ``usage_*`` counters.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from billing.service import Usage, record_usage
from config import get_settings
from plans.service import CRAWL_KINDS
from store.models import Job

#: Built once (statement construction costs more CPU than running it on the job path).
_JOB_ROW = select(
    Job.org_id, Job.kind, Job.input, Job.progress, Job.started_at, Job.completed_at
).where(Job.id == bindparam("job_id"))


def _job_row(executor: Session | Connection, job_id: str) -> Any:
    return executor.execute(_JOB_ROW, {"job_id": job_id}).first()


def _model_of(job_input: dict[str, Any]) -> str:
    model = job_input.get("model") or (job_input.get("body") or {}).get("model")
    if not model:
        lines = job_input.get("requests") or []
        body = (lines[0].get("body") or {}) if lines and isinstance(lines[0], dict) else {}
        model = body.get("model") or ""
    return str(model or "unknown")


def job_usage(job_id: str, row: Any) -> list[Usage]:
    """The usage events of a terminal job's row."""
    if row is None or row.started_at is None or row.completed_at is None:
        return []  # never ran (cancelled while queued): nothing to bill
    progress: dict[str, Any] = dict(row.progress or {})

    def usage(meter: str, quantity: Any, dimension: str) -> Usage:
        return Usage(
            org_id=row.org_id,
            meter=meter,
            quantity=int(quantity or 0),
            dimension=dimension,
            subject_type="job",
            subject_id=job_id,
            occurred_at=row.completed_at,
            idempotency_key=f"job:{job_id}:{meter}:{dimension}",
        )

    out = [usage("jobs", 1, row.kind)]
    if row.kind in CRAWL_KINDS:
        crawled = int(progress.get("pages_crawled") or 0)
        rendered = min(crawled, int(progress.get("pages_rendered") or 0))
        out += [
            usage("pages_crawled", crawled - rendered, "static"),
            usage("pages_crawled", rendered, "rendered"),
        ]
    if "usage_prompt_tokens" in progress or "usage_completion_tokens" in progress:
        model = _model_of(dict(row.input or {}))
        out += [
            usage("tokens_in", progress.get("usage_prompt_tokens"), model),
            usage("tokens_out", progress.get("usage_completion_tokens"), model),
            usage(
                "gpu_seconds", progress.get("usage_engine_seconds"), get_settings().billing_gpu_type
            ),
        ]
    return [u for u in out if u.quantity > 0]


def record_job_usage(executor: Session | Connection, job_id: str) -> None:
    """Meter a job that just became terminal, in the caller's transaction."""
    if not get_settings().billing_metering:
        return
    record_usage(executor, job_usage(job_id, _job_row(executor, job_id)))
