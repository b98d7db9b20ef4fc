"""Deploy-queue tasks of app projects: ``project_deploy``, ``project_rollback``,
``project_provision`` and ``project_delete`` jobs, and the ``projects.supervise`` beat task; the
work is ``projects.jobs``."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_shutdown

from jobs.context import JobContext
from projects.jobs import run_delete, run_deploy, run_provision, supervise_all
from projects.runtime import reset_backend
from tasks.runner import job_task
from workers.app import celery_app


@job_task("project_deploy")
def project_deploy(ctx: JobContext) -> dict[str, Any] | None:
    """Build the commit and roll it out (health check, switch, drain)."""
    return run_deploy(ctx)


@job_task("project_rollback")
def project_rollback(ctx: JobContext) -> dict[str, Any] | None:
    """Roll out a stored release again: its artifact and env snapshot, no rebuild."""
    return run_deploy(ctx)


@job_task("project_provision")
def project_provision(ctx: JobContext) -> dict[str, Any] | None:
    return run_provision(ctx)


@job_task("project_delete")
def project_delete(ctx: JobContext) -> dict[str, Any] | None:
    return run_delete(ctx)


@celery_app.task(name="projects.supervise", acks_late=True, ignore_result=True)
def supervise_projects() -> dict[str, int]:
    """Restart crashed replicas of live environments; emit ``project.crashed``."""
    return supervise_all()


@worker_process_shutdown.connect
def _close_backend(**_: Any) -> None:
    reset_backend()
