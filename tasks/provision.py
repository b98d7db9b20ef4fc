"""Provision queue tasks: ``provision.run`` (create / delete / rotate a resource, apply changed
limits), ``backup.run`` (take a backup, then verify it by a scratch restore), ``restore.run``
(fill a new resource from a backup, a point in time or a branch), and the beat tasks (scheduled
backups, retention, WAL-archive health, size limits, shared Redis ACL reconcile).

Thin: call ``resources.service``, which records outcomes in its own short transactions (their
jobs are sent as each commits), then emit the events it returned.
"""

from __future__ import annotations

import logging
from typing import Any

from common.timeutil import utcnow
from resources import service
from resources.schemas import BackupJobInput, ProvisionJobInput, RestoreJobInput
from resources.service import FailedWithOutcome, Outcome
from store.db import session_scope
from tasks.runner import JobContext, job_task
from workers.app import celery_app

log = logging.getLogger(__name__)
service.register_binding_hook()  # deploy workers import every task module: bindings apply there


def dispatch(outcome: Outcome) -> None:
    """Emit the outcome's events (its jobs were sent when the rows that created them
    committed)."""
    if outcome.events:
        with session_scope() as session:
            service.record(session, outcome)


def _run(fn: Any, *args: Any) -> Outcome:
    try:
        outcome: Outcome = fn(session_scope, *args)
    except FailedWithOutcome as exc:
        dispatch(exc.outcome)
        raise
    dispatch(outcome)
    return outcome


@job_task("provision")
def provision(ctx: JobContext) -> dict[str, Any] | None:
    """Create, delete, rotate the credentials of, or apply new limits to one resource."""
    job = ProvisionJobInput.model_validate(ctx.input)
    if job.operation == "create":
        _run(service.run_create, job.resource_id)
    elif job.operation == "delete":
        _run(service.run_delete, job.resource_id, job.purge_backups)
    elif job.operation == "limits":
        _run(service.run_apply_limits, job.resource_id, job.limits or {}, job.previous or {})
        return {"resource_id": job.resource_id, "operation": job.operation, "limits": job.limits}
    else:
        _run(service.run_rotate, job.resource_id)
    return {"resource_id": job.resource_id, "operation": job.operation}


@job_task("backup")
def backup(ctx: JobContext) -> dict[str, Any] | None:
    """Take a backup (then queue its verification) or verify one by a scratch restore."""
    job = BackupJobInput.model_validate(ctx.input)
    if job.operation == "backup":
        _run(service.run_backup, job.backup_id)
        return {"backup_id": job.backup_id}
    outcome, report = service.run_verify(session_scope, job.backup_id)
    dispatch(outcome)
    if report.get("verified") is False:
        raise FailedWithOutcome(
            "The backup did not restore to the same data: " + "; ".join(report["mismatches"]),
            "verification_failed",
            Outcome(),
        )
    return {"backup_id": job.backup_id, **report}


@job_task("restore")
def restore(ctx: JobContext) -> dict[str, Any] | None:
    """Fill a new resource from a backup, a point in time or the source's current data."""
    job = RestoreJobInput.model_validate(ctx.input)
    _run(service.run_restore, job.model_dump(mode="json"))
    return {"resource_id": job.resource_id, **job.describe()}


@celery_app.task(name="resources.scheduled_backups", acks_late=True, ignore_result=True)
def scheduled_backups() -> int:
    """Queue the backups whose ``backup_schedule`` is due; fail what a dead job abandoned;
    drop backups past retention."""
    now = utcnow()
    with session_scope() as session:
        outcome = service.schedule_due_backups(session, now)
        abandoned = service.fail_abandoned(session)
        expired = service.expire_backups(session, now)
    dispatch(outcome)
    dispatch(abandoned)
    if expired:
        log.info("%d backups past their retention deleted", expired)
    return len(outcome.jobs)


@celery_app.task(name="resources.check_archiving", acks_late=True, ignore_result=True)
def check_archiving() -> int:
    """Heartbeat + pg_stat_archiver for every dedicated postgres (degraded + alert on failure)."""
    outcome = service.check_archiving(session_scope)
    dispatch(outcome)
    return len(outcome.events)


@celery_app.task(name="resources.check_usage", acks_late=True, ignore_result=True)
def check_usage() -> int:
    """Size limits: past it → degraded (size_limit_exceeded) + alert, a volume read-only."""
    outcome = service.check_usage(session_scope)
    dispatch(outcome)
    return len(outcome.events)


@celery_app.task(name="resources.reconcile_access", acks_late=True, ignore_result=True)
def reconcile_access() -> int:
    """Re-apply shared Redis ACL users from the store (a Redis restart forgets them)."""
    return service.reconcile_access(session_scope)
