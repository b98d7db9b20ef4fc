"""The rules of jobs: the one function that creates a job, and job lifecycle events.

Everything that creates a job, wherever it runs (a REST route, Python's ``submit``, a domain
service creating a deploy or provision job, the reaper re-queuing one), calls
:func:`create_job` on the caller's session: it validates the input against the kind's declared
model, runs the kind's declared submit-time check (a crawl's SSRF guard), applies the plan's
quota, inserts the row, stores a per-job webhook apart, and records the job's message in the
outbox, which sends it once the caller's transaction commits. Functions here never commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from billing import service as billing
from common.errors import NotFound, ValidationFailed
from config import get_settings
from config.queues import KINDS, resolve
from jobs.views import job_to_dict
from plans import service as plans
from store import jobs as job_store
from store.models import Job
from webhooks import events
from webhooks import service as webhooks
from webhooks.repository import has_targets
from webhooks.schemas import JOB_EVENTS
from workers import outbox


def validate_input(kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The kind's input, validated and normalised (422 ``validation_error`` when it is not)."""
    declared = KINDS.get(kind)
    if declared is None:
        raise NotFound(f"Unknown job kind {kind!r}.")
    if declared.input_model is None:
        return dict(payload)
    model: type[BaseModel] = resolve(declared.input_model)
    try:
        return model.model_validate(dict(payload)).model_dump(mode="json")
    except ValidationError as exc:
        details = [
            {"loc": ["body", *map(str, err["loc"])], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors()
        ]
        raise ValidationFailed("The job input is invalid.", details=details) from exc


def check_input(kind: str, input: Mapping[str, Any]) -> None:
    """The kind's declared submit-time check on its validated input (a crawl's SSRF guard:
    422 ``unsafe_url``), run by every creation path through :func:`create_job`."""
    declared = KINDS.get(kind)
    if declared is not None and declared.check is not None:
        resolve(declared.check)(input)


def create_job(
    session: Session,
    kind: str,
    org_id: str,
    payload: Mapping[str, Any],
    *,
    quota: bool = True,
    job_id: str | None = None,
) -> Job:
    """Validate, check the quota, insert a ``queued`` job and record its message (sent after the
    caller's commit). ``payload`` may carry ``webhook`` (a per-job webhook, stored apart with its
    secret encrypted; never part of the input). ``quota=False`` for work on an object that
    exists (a deployment's rollout, a resource's backup): the plan meters new work only."""
    return create_jobs(session, kind, org_id, [payload], quota=quota, job_ids=[job_id])[0]


def create_jobs(
    session: Session,
    kind: str,
    org_id: str,
    payloads: Sequence[Mapping[str, Any]],
    *,
    quota: bool = True,
    job_ids: Sequence[str | None] | None = None,
) -> list[Job]:
    """:func:`create_job` for many ``kind`` jobs of one organisation at once, all or none (one
    payload refused refuses them all; a batch's error names the payload's index in ``loc``):
    the same checks, with the plan read and the quota and credits checked once for the batch,
    the rows inserted in one statement, and the messages sent together after the commit."""
    if not payloads:
        return []
    batch = len(payloads) > 1
    prepared: list[tuple[dict[str, Any], Any]] = []
    for index, payload in enumerate(payloads):
        try:
            prepared.append(_prepare(kind, payload))
        except ValidationFailed as exc:
            if not batch:
                raise
            raise ValidationFailed(
                f"Job {index}: {exc.message}", details=_at_index(exc.details, index)
            ) from exc
    inputs = [clean for clean, _ in prepared]
    if quota:
        plan = plans.org_plan(session, org_id)
        plans.enforce_quota(session, org_id, kind, *inputs, plan=plan)  # 402 quota_exceeded
        # 402 beyond allowance + credits
        billing.check_credits(session, org_id, kind, *inputs, plan=plan.name)
    jobs = job_store.insert_jobs(session, org_id=org_id, kind=kind, inputs=inputs, job_ids=job_ids)
    for job, (clean, hook) in zip(jobs, prepared, strict=True):
        if hook is not None:
            webhooks.attach_job_webhook(session, org_id, job.id, hook)
        outbox.enqueue(session, kind, job.id, label=task_label(kind, clean))
    return jobs


def _prepare(kind: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """A payload's validated input and its per-job webhook (parsed; None without one)."""
    clean = dict(payload)
    hook_value = clean.pop("webhook", None)
    hook = webhooks.parse_job_webhook(hook_value) if hook_value is not None else None
    clean = validate_input(kind, clean)
    clean.pop("webhook", None)  # a model's WithWebhook default: kept apart, never in the input
    check_input(kind, clean)
    return clean, hook


def _at_index(details: Any, index: int) -> Any:
    """Validation details of one payload of a batch, located at its index."""
    if not isinstance(details, list):
        return details
    out = []
    for item in details:
        if isinstance(item, dict) and isinstance(item.get("loc"), list):
            loc = item["loc"]
            rest = loc[1:] if loc[:1] == ["body"] else loc
            item = {**item, "loc": ["body", index, *rest]}
        out.append(item)
    return out


def task_label(kind: str, input: Mapping[str, Any]) -> str:
    """What Flower shows for a job's task: its kind and operation (``deploy.apply``,
    ``backup.verify``, ``crawl.full``), not the generic ``<kind>.run``."""
    operation = input.get("operation") or input.get("mode") or "run"
    return f"{kind}.{operation}"


# --- lifecycle events -----------------------------------------------------------------------

_last_progress: dict[str, float] = {}
_progress_lock = threading.Lock()


def _progress_due(job_id: str, interval: float) -> bool:
    """``job.progress`` goes out at most every ``interval`` seconds per job (per process)."""
    now = time.monotonic()
    with _progress_lock:
        if now - _last_progress.get(job_id, -interval - 1) < interval:
            return False
        _last_progress[job_id] = now
        if len(_last_progress) > 10_000:  # forget the oldest jobs
            for key in sorted(_last_progress, key=_last_progress.__getitem__)[:5_000]:
                del _last_progress[key]
        return True


def emit_job_event(session: Session, event_type: str, job_id: str) -> list[str]:
    """Record ``event_type`` (``job.started|progress|completed|failed|cancelled``) for the
    job's webhooks in the caller's transaction; the payload is the job's view as of now."""
    if event_type not in JOB_EVENTS:
        raise ValueError(f"unknown job event type {event_type!r}")
    if event_type == "job.progress":
        if not _progress_due(job_id, get_settings().webhook_progress_interval_seconds):
            return []
    else:
        with _progress_lock:
            _last_progress.pop(job_id, None)
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return []
    if event_type != "job.progress":
        events.run_hooks(session, event_type, job.org_id, {"id": job_id, "kind": job.kind})
    if not has_targets(session, job.org_id, job_id):
        return []
    return events.emit(session, event_type, job.org_id, job_to_dict(job), job_id=job_id)
