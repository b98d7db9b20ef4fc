"""Provision queue tasks: ``provision.run`` (create / delete / rotate a resource, apply changed
limits), ``backup.run`` (take a backup, then verify it by a scratch restore), ``restore.run``
(fill a new resource from a backup, a point in time or a branch), and the beat tasks (scheduled
backups, retention, WAL-archive health, size limits, shared Redis ACL reconcile). The work is
``resources.jobs``.
"""

from __future__ import annotations

from typing import Any

from jobs.context import JobContext
from resources import jobs
from tasks.runner import job_task
from workers.app import celery_app


@job_task("provision")
def provision(ctx: JobContext) -> dict[str, Any] | None:
    """Create, delete, rotate the credentials of, or apply new limits to one resource."""
    return jobs.run_provision(ctx)


@job_task("backup")
def backup(ctx: JobContext) -> dict[str, Any] | None:
    """Take a backup (then queue its verification) or verify one by a scratch restore."""
    return jobs.run_backup(ctx)


@job_task("restore")
def restore(ctx: JobContext) -> dict[str, Any] | None:
    """Fill a new resource from a backup, a point in time or the source's current data."""
    return jobs.run_restore(ctx)


@celery_app.task(name="resources.scheduled_backups", acks_late=True, ignore_result=True)
def scheduled_backups() -> int:
    """Queue the backups whose ``backup_schedule`` is due; fail what a dead job abandoned;
    drop backups past retention."""
    return jobs.scheduled_backups()


@celery_app.task(name="resources.check_archiving", acks_late=True, ignore_result=True)
def check_archiving() -> int:
    """Heartbeat + pg_stat_archiver for every dedicated postgres (degraded + alert on failure)."""
    return jobs.check_archiving()


@celery_app.task(name="resources.check_usage", acks_late=True, ignore_result=True)
def check_usage() -> int:
    """Size limits: past it → degraded (size_limit_exceeded) + alert, a volume read-only."""
    return jobs.check_usage()


@celery_app.task(name="resources.reconcile_access", acks_late=True, ignore_result=True)
def reconcile_access() -> int:
    """Re-apply shared Redis ACL users from the store (a Redis restart forgets them)."""
    return jobs.reconcile_access()
