"""Turn a domain handler into a job task, and submit jobs (REST and Python share this path).

``@job_task("diagnostics", input_model=SleepInput)`` registers the Celery task
``diagnostics.run`` on the kind's queue with the kind's time limits. The task body loads the
job, marks it running through the compare-and-set transition (counting deliveries, so a job
whose worker keeps dying fails with ``worker_lost``), calls the handler with a ``JobContext``
and records the outcome. ``submit()`` creates the job row, commits, and only then enqueues.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, cast

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from common import events
from common.errors import ConveyorError, JobFailed, NotFound, Unavailable, ValidationFailed
from config import get_settings
from config.queues import KINDS
from plans import service as plans
from store import jobs as job_store
from store import orgs
from store.db import autocommit, is_postgresql, retry_on_disconnect, session_scope
from store.jobs import JobStatus, StartedJob, StartOutcome
from store.models import Job
from webhooks import service as webhooks
from webhooks.repository import LISTENING_TO_JOB, has_targets
from workers.app import celery_app

log = logging.getLogger(__name__)


PROGRESS_FLUSH_SECONDS = 0.5


class JobCancelled(Exception):
    """Raised inside a handler when the job was cancelled; the runner stops quietly."""


@dataclass
class JobContext:
    """What a handler gets: the job's input and ways to report progress and results."""

    job_id: str
    org_id: str
    kind: str
    input: dict[str, Any]
    attempt: int
    _next_seq: int = 0
    # The job was running when the context was made: no need to ask the store again at once.
    _last_cancel_check: float = field(default_factory=time.monotonic)
    _cancelled: bool = False
    # Whether any webhook listens to this job's events (checked at start and at the end).
    listening: bool = False
    # ``progress`` counters not written yet: written at most every PROGRESS_FLUSH_SECONDS, and
    # with the job's final transition, so a short job costs no progress transaction at all.
    _pending: dict[str, Any] = field(default_factory=dict)
    _last_flush: float = field(default_factory=time.monotonic)
    started_monotonic: float = field(default_factory=time.monotonic)

    def take_pending_progress(self) -> dict[str, Any]:
        pending, self._pending = self._pending, {}
        return pending

    def progress(self, **counters: Any) -> None:
        """Set counters (merged into ``progress``); visible to pollers within half a second."""
        self._pending.update(counters)
        if time.monotonic() - self._last_flush >= PROGRESS_FLUSH_SECONDS:
            self.flush_progress()

    def flush_progress(self) -> None:
        if not self._pending:
            return
        counters = self.take_pending_progress()
        self._last_flush = time.monotonic()
        with session_scope() as own:
            job_store.relax_commit_durability(own)  # progress only: no disk flush wait
            job_store.set_progress(own, self.job_id, counters)
        if self.listening:
            events.publish("job.progress", self.job_id, counters)

    def increment(self, **deltas: int) -> dict[str, Any]:
        """Add to counters at once and exactly (many workers may share one job)."""
        with session_scope() as session:
            job_store.relax_commit_durability(session)
            merged = job_store.increment_progress(session, self.job_id, deltas)
        if self.listening:
            events.publish("job.progress", self.job_id, merged)
        return merged

    def cancelled(self, min_interval: float = 0.0) -> bool:
        """True once the job was cancelled (or deleted); checks the store at most every
        ``min_interval`` seconds."""
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._last_cancel_check < min_interval:
            return False
        self._last_cancel_check = now
        with session_scope() as session:
            status = job_store.status_of(session, self.job_id)
        self._cancelled = status in (None, JobStatus.CANCELLED)
        return self._cancelled

    def check_cancelled(self, min_interval: float = 0.0) -> None:
        if self.cancelled(min_interval):
            raise JobCancelled(self.job_id)

    def reserve_seq(self) -> int:
        """The next result item's sequence number."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def add_result(
        self,
        *,
        data: dict[str, Any] | None = None,
        body: str | None = None,
        name: str = "",
        content_type: str = "application/json",
        session: Session | None = None,
    ) -> int:
        seq = self.reserve_seq()
        if session is not None:
            job_store.add_result_item(
                session,
                self.job_id,
                seq=seq,
                name=name,
                content_type=content_type,
                body=body,
                data=data,
            )
        else:
            with session_scope() as own:
                job_store.add_result_item(
                    own,
                    self.job_id,
                    seq=seq,
                    name=name,
                    content_type=content_type,
                    body=body,
                    data=data,
                )
        return seq


Handler = Callable[[JobContext], dict[str, Any] | None]


class JobTask(Task):  # type: ignore[misc]
    """Celery task class of every job kind; ``submit`` is the Python entry point."""

    kind: str = ""
    input_model: type[BaseModel] | None = None

    def submit(self, input: dict[str, Any] | None = None, *, org: str, **fields: Any) -> str:
        """Create the job for organisation ``org`` (name or id), enqueue it, return its id."""
        payload = {**(input or {}), **fields}
        with session_scope() as session:
            organisation = orgs.find_org(session, org)
            if organisation is None:
                raise NotFound(f"Organisation {org!r} does not exist.")
            org_id = organisation.id
        job = create_and_enqueue(self.kind, org_id, payload)
        return job.id


def validate_input(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    task = registered_task(kind)
    if task.input_model is None:
        return payload
    try:
        return task.input_model.model_validate(payload).model_dump(mode="json")
    except ValidationError as exc:
        details = [
            {"loc": ["body", *map(str, err["loc"])], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors()
        ]
        raise ValidationFailed("The job input is invalid.", details=details) from exc


def registered_task(kind: str) -> JobTask:
    task = celery_app.tasks.get(f"{kind}.run")
    if task is None:
        celery_app.loader.import_default_modules()  # the API process imports tasks lazily
        task = celery_app.tasks.get(f"{kind}.run")
    if task is None:
        raise NotFound(f"Unknown job kind {kind!r}.")
    return cast(JobTask, task)


def enqueue(job_id: str, kind: str) -> None:
    """Send the job's message. Call only after the row is committed."""
    try:
        celery_app.send_task(f"{kind}.run", args=[job_id], queue=KINDS[kind].queue, retry=False)
    except Exception as exc:
        with session_scope() as session:
            job_store.transition(
                session,
                job_id,
                to=JobStatus.FAILED,
                from_=[JobStatus.QUEUED],
                error={"code": "unavailable", "message": "The broker is unavailable."},
            )
        raise Unavailable("The job queue is unavailable; the job was not accepted.") from exc


def create_and_enqueue(kind: str, org_id: str, payload: dict[str, Any]) -> Job:
    """Validate, create the job row, commit, then enqueue (the shared REST/Python path)."""
    payload = dict(payload)
    hook_value = payload.pop("webhook", None)  # create bodies may carry a per-job webhook
    hook = webhooks.parse_job_webhook(hook_value) if hook_value is not None else None
    clean = validate_input(kind, payload)
    clean.pop("webhook", None)  # a model's WithWebhook default: kept apart, never in the input

    def read_plan() -> plans.OrgPlan:
        with autocommit() as connection:
            return plans.org_plan(connection, org_id)

    plan = retry_on_disconnect(read_plan)  # a dead pooled connection fails here, harmlessly
    job: Job | None = None
    if hook is None and not plan.counts_concurrency:
        # Nothing to count under a lock and nothing else to write: the usage checks only
        # read, and the job's INSERT is one statement that commits on its own.
        with autocommit() as connection:
            plans.check_usage(connection, org_id, plan, kind, clean)  # 402 quota_exceeded
            job = job_store.insert_job(connection, org_id=org_id, kind=kind, input=clean)
    if job is None:
        with session_scope() as session:
            plans.enforce_quota(session, org_id, kind, clean, plan=plan)  # 402 quota_exceeded
            job = job_store.insert_job(session, org_id=org_id, kind=kind, input=clean)
            if hook is not None:  # stored apart, secret encrypted; never part of the job's input
                webhooks.attach_job_webhook(session, org_id, job.id, hook)
    enqueue(job.id, kind)
    return job


def _record_failure(job_id: str, code: str, message: str) -> None:
    with session_scope() as session:
        won = job_store.transition(
            session,
            job_id,
            to=JobStatus.FAILED,
            from_=[JobStatus.RUNNING],
            error={"code": code, "message": message},
        )
    if won:
        events.publish("job.failed", job_id, {"code": code, "message": message})


def run_job(task: Task, job_id: str, handler: Handler) -> None:
    delivery_id = str(task.request.id)

    # The start is one compare-and-set statement, committed on its own (durably); a connection
    # found dead is replaced and the statement tried once more.
    def start() -> tuple[StartOutcome, StartedJob | None, Any]:
        with autocommit() as connection:
            return job_store.start(
                connection,
                job_id,
                delivery_id,
                get_settings().max_deliveries,
                also=LISTENING_TO_JOB,
            )

    outcome, job, listening = retry_on_disconnect(start)
    if job is not None and listening is None:  # a redelivery: ask separately
        with session_scope() as session:
            listening = has_targets(session, job.org_id, job_id)
    if outcome == StartOutcome.EXHAUSTED:
        events.publish("job.failed", job_id, {"code": "worker_lost"})
        return
    if job is None:
        log.info("job %s: delivery %s skipped (%s)", job_id, delivery_id, outcome)
        return
    listening = bool(listening)
    if outcome == StartOutcome.STARTED and listening:
        events.publish("job.started", job_id)
    org_id, kind = job.org_id, job.kind
    ctx = JobContext(
        job_id=job_id,
        org_id=org_id,
        kind=kind,
        input=job.input,
        attempt=job.attempts,
        listening=listening,
    )
    try:
        try:
            result = handler(ctx)
        finally:
            if sys.exc_info()[0] is not None:
                ctx.flush_progress()  # what the job did before it stopped stays visible
    except JobCancelled:
        log.info("job %s: cancelled while running", job_id)
        return
    except SoftTimeLimitExceeded:
        _record_failure(job_id, "timed_out", f"The job exceeded its time limit for kind {kind!r}.")
        return
    except ConveyorError as exc:
        _record_failure(job_id, exc.code, exc.message)
        return
    except Exception as exc:
        log.exception("job %s: unhandled error", job_id)
        _record_failure(job_id, "internal_error", f"Internal error: {type(exc).__name__}.")
        return
    ran_for = time.monotonic() - ctx.started_monotonic
    # On PostgreSQL the completion is one statement (autocommit, one round trip); elsewhere a
    # transaction of two.
    pending = ctx.take_pending_progress()
    seq = ctx.reserve_seq() if result is not None else 0

    def complete() -> bool:
        # On PostgreSQL one statement (autocommit, one round trip); elsewhere a transaction.
        scope: AbstractContextManager[Session | Connection] = (
            autocommit() if is_postgresql() else session_scope()
        )
        with scope as executor:
            return job_store.complete(
                executor, job_id, result=result, result_seq=seq, merge_progress=pending
            )

    won = retry_on_disconnect(complete)
    # A webhook registered while a longer job ran still hears of its completion.
    if won and not ctx.listening and ran_for > 1.0:
        with session_scope() as session:
            ctx.listening = has_targets(session, org_id, job_id)
    if won and ctx.listening:
        events.publish("job.completed", job_id)


def job_task(
    kind: str, *, input_model: type[BaseModel] | None = None, **options: Any
) -> Callable[[Handler], JobTask]:
    """Register ``handler`` as the Celery task ``<kind>.run`` on the kind's queue and limits."""
    limits = KINDS[kind]

    def decorator(handler: Handler) -> JobTask:
        def body(self: Task, job_id: str) -> None:
            run_job(self, job_id, handler)

        body.__name__ = handler.__name__
        body.__doc__ = handler.__doc__
        task = celery_app.task(
            name=f"{kind}.run",
            bind=True,
            base=JobTask,
            acks_late=True,
            reject_on_worker_lost=True,
            soft_time_limit=limits.soft_time_limit,
            time_limit=limits.time_limit,
            queue=limits.queue,
            kind=kind,
            input_model=input_model,
            **options,
        )(body)
        return cast(JobTask, task)

    return decorator


__all__ = [
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobTask",
    "create_and_enqueue",
    "enqueue",
    "job_task",
    "validate_input",
]
