"""Celery tasks of the access domain (thin: the work is ``access.jobs``)."""

from __future__ import annotations

from access import jobs
from workers.app import celery_app


@celery_app.task(name="maintenance.purge_audit_log")
def purge_audit_log() -> int:
    """The audit log's retention (``CONVEYOR_AUDIT_RETENTION_DAYS``, default 400)."""
    return jobs.purge_audit_log()
