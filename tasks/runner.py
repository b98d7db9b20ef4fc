"""Turn a domain handler into a job task: ``@job_task("diagnostics")`` registers the Celery task
``diagnostics.run`` on the kind's queue with the kind's time limits (the kind is declared once,
in ``config.queues.KINDS``).

The task body starts the job through the compare-and-set transition (counting deliveries, so a
job whose worker keeps dying fails with ``worker_lost``), holds the job's lease while the handler
runs (``jobs.jobs.LeaseKeeper``), calls the handler with a ``JobContext`` and records the outcome,
fenced by its delivery: a job re-queued after its lease lapsed is no longer this delivery's to end.
A store that cannot be reached never consumes the message: the delivery is retried with backoff.
``JobTask.submit`` (and ``submit_many``, many jobs in one transaction) is the Python entry point;
it creates jobs through ``jobs.service.create_jobs``, the function behind every REST route. What
a handler gets (``JobContext``, ``JobCancelled``) is ``jobs/context.py``; the handlers themselves
are each domain's ``jobs.py``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, cast

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from common.errors import ConveyorError, NotFound
from common.retry import RetryPolicy
from config import get_settings
from config.queues import KINDS
from jobs import jobs as job_leases
from jobs.context import Handler, JobCancelled, JobContext
from jobs.service import create_jobs, emit_job_event
from store import jobs as job_store
from store import orgs
from store.db import (
    autocommit,
    is_postgresql,
    is_unreachable,
    retry_on_disconnect,
    session_scope,
    store_reachable,
    store_retry,
)
from store.jobs import JobStatus, StartedJob, StartOutcome
from store.migrate import require_migrated
from webhooks.repository import LISTENING_TO_JOB, has_targets
from workers import outbox
from workers.app import celery_app

log = logging.getLogger(__name__)


class JobTask(Task):  # type: ignore[misc]
    """Celery task class of every job kind; ``submit`` is the Python entry point."""

    kind: str = ""

    def submit(self, input: dict[str, Any] | None = None, *, org: str, **fields: Any) -> str:
        """Create the job for organisation ``org`` (name or id) and return its id; it is sent
        when the creating transaction commits (the REST path's very function and checks)."""
        return self.submit_many([{**(input or {}), **fields}], org=org)[0]

    def submit_many(self, inputs: Sequence[dict[str, Any]], *, org: str) -> list[str]:
        """Create one job per input for organisation ``org`` in one transaction, all or none,
        and return their ids in order: the checks of :meth:`submit` (the plan and credits read
        once), one multi-row insert, and the messages sent together after the commit."""
        require_migrated()  # a missing or unmigrated store: one line saying what to run
        with session_scope() as session:
            session.info[outbox.ON_SEND_FAILURE] = "reject"
            organisation = orgs.find_org(session, org)
            if organisation is None:
                raise NotFound(f"Organisation {org!r} does not exist.")
            jobs = create_jobs(session, self.kind, organisation.id, list(inputs))
        return [job.id for job in jobs]


def _store_retry_delay(task: Task) -> float:
    """Backoff between deliveries while the store cannot be reached: 1, 2, 4 … s, capped."""
    retries = int(getattr(task.request, "retries", 0) or 0)
    policy = RetryPolicy(attempts=None, base=1.0, cap=get_settings().store_retry_max_seconds)
    return policy.delay(retries + 1)


def _retry_later(task: Task, job_id: str, exc: BaseException) -> NoReturn:
    """The store cannot be reached: hand the message back (a retry with backoff, same task id)
    instead of consuming it; the job runs once the store answers again."""
    delay = _store_retry_delay(task)
    log.warning("job %s: the store is unreachable (%s); retrying in %.0f s", job_id, exc, delay)
    raise task.retry(countdown=delay, max_retries=None, exc=exc)


def _finish_failed(ctx: JobContext, delivery_id: str, code: str, message: str) -> None:
    """``running → failed`` for this delivery, with its event, in one transaction."""

    def record() -> None:
        with session_scope() as session:
            won = job_store.transition(
                session,
                ctx.job_id,
                to=JobStatus.FAILED,
                from_=[JobStatus.RUNNING],
                error={"code": code, "message": message},
                merge_progress=ctx.take_pending_progress() or None,
                delivery_id=delivery_id,
            )
            if won:  # even unheard: the event hooks (alert rules) see every failure
                emit_job_event(session, "job.failed", ctx.job_id)

    retry_on_disconnect(record)


def _finish_completed(ctx: JobContext, delivery_id: str, result: dict[str, Any] | None) -> bool:
    """``running → completed`` with the result, for this delivery; True if it won. Without a
    listening webhook on PostgreSQL it is one statement on an autocommit connection (the result
    item and the usage events included); with one, the completion and its event's deliveries
    commit together."""
    pending = ctx.take_pending_progress()
    seq = ctx.reserve_seq() if result is not None else 0
    if not ctx.listening and time.monotonic() - ctx.started_monotonic > 1.0:
        with session_scope() as session:  # a webhook registered while a longer job ran
            ctx.listening = has_targets(session, ctx.org_id, ctx.job_id)

    def complete(executor: Session | Connection) -> bool:
        return job_store.complete(
            executor,
            ctx.job_id,
            result=result,
            result_seq=seq,
            delivery_id=delivery_id,
            merge_progress=pending,
            kind=ctx.kind,  # the kind's metering is part of the completing statement
        )

    def record() -> bool:
        if ctx.listening or not is_postgresql():
            with session_scope() as session:
                won = complete(session)
                if won and ctx.listening:
                    emit_job_event(session, "job.completed", ctx.job_id)
                return won
        with autocommit() as connection:  # one statement: the completion, result and usage
            return complete(connection)

    return store_retry.call(record)


def run_job(task: Task, job_id: str, handler: Handler) -> None:
    """One delivery of a job's message: start it (compare-and-set), hold its lease while the
    handler runs, and record the outcome, fenced by this delivery."""
    delivery_id = str(task.request.id)

    # The start is one compare-and-set statement, committed on its own without waiting for its
    # disk flush (the completion's durable commit flushes it; see store.db.autocommit); a
    # connection found dead is replaced and the statement tried once more. A job that was not
    # queued (a redelivery, a duplicate) takes the durable path.
    def start() -> tuple[StartOutcome, StartedJob | None, Any]:
        with autocommit(durable=False) as connection:
            first = job_store.start_first(connection, job_id, delivery_id, also=LISTENING_TO_JOB)
        if first is not None:
            return StartOutcome.STARTED, first[0], first[1]
        with autocommit() as connection:
            return job_store.start(
                connection,
                job_id,
                delivery_id,
                get_settings().max_deliveries,
                also=LISTENING_TO_JOB,
            )

    try:
        outcome, job, listening = retry_on_disconnect(start)
        if job is not None and listening is None:  # a redelivery: ask separately
            with session_scope() as session:
                listening = has_targets(session, job.org_id, job_id)
        if outcome == StartOutcome.EXHAUSTED:
            with session_scope() as session:
                emit_job_event(session, "job.failed", job_id)
            return
        if job is None:
            log.info("job %s: delivery %s skipped (%s)", job_id, delivery_id, outcome)
            return
        if outcome == StartOutcome.STARTED and listening:
            with session_scope() as session:
                emit_job_event(session, "job.started", job_id)
    except Exception as exc:
        if is_unreachable(exc):
            _retry_later(task, job_id, exc)
        raise
    ctx = JobContext(
        job_id=job_id,
        org_id=job.org_id,
        kind=job.kind,
        input=job.input,
        attempt=job.attempts,
        delivery_id=delivery_id,
        queue=_delivery_queue(task) or KINDS[job.kind].queue,
        listening=bool(listening),
    )
    job_leases.lease_keeper.hold(job_id, delivery_id)
    try:
        _run_handler(task, ctx, handler)
    finally:
        job_leases.lease_keeper.release(job_id)


def _delivery_queue(task: Task) -> str | None:
    """The queue this delivery came from (a job routed elsewhere keeps its helpers there)."""
    info = getattr(task.request, "delivery_info", None) or {}
    queue = info.get("routing_key")
    return str(queue) if queue else None


def _run_handler(task: Task, ctx: JobContext, handler: Handler) -> None:
    job_id, delivery_id = ctx.job_id, ctx.delivery_id
    try:
        try:
            result = handler(ctx)
        finally:
            if sys.exc_info()[0] is not None:
                with contextlib.suppress(Exception):  # the store may be what failed
                    ctx.flush_progress()  # what the job did before it stopped stays visible
    except JobCancelled:
        log.info("job %s: cancelled (or no longer this delivery's) while running", job_id)
        return
    except SoftTimeLimitExceeded:
        message = f"The job exceeded its time limit for kind {ctx.kind!r}."
        _finish_failed(ctx, delivery_id, "timed_out", message)
        return
    except ConveyorError as exc:
        _finish_failed(ctx, delivery_id, exc.code, exc.message)
        return
    except Exception as exc:
        if is_unreachable(exc) and not store_reachable():
            _retry_later(task, job_id, exc)  # same delivery: it runs again (attempt + 1)
        log.exception("job %s: unhandled error", job_id)
        _finish_failed(ctx, delivery_id, "internal_error", f"Internal error: {type(exc).__name__}.")
        return
    if not _finish_completed(ctx, delivery_id, result):
        log.info("job %s: finished, but no longer held by delivery %s", job_id, delivery_id)


def job_task(kind: str, **options: Any) -> Callable[[Handler], JobTask]:
    """Register ``handler`` as the Celery task ``<kind>.run`` on the kind's queue and limits
    (the kind itself, its input model and view extras, is declared in ``config.queues.KINDS``)."""
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
            **options,
        )(body)
        return cast(JobTask, task)

    return decorator


__all__ = ["JobTask", "job_task", "run_job"]
