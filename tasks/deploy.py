"""Deploy queue tasks: ``deploy.run`` (one lifecycle operation as a job) and the
``deployments.reconcile`` beat task; the work is ``deployments.jobs``."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_shutdown

from deployments.jobs import reconcile_all, run_deploy
from deployments.runtime import reset_backend
from jobs.context import JobContext
from tasks.runner import job_task
from workers.app import celery_app


@job_task("deploy")
def deploy(ctx: JobContext) -> dict[str, Any] | None:
    """Apply, stop or delete one deployment; a rollout waits (with a deadline) until running."""
    return run_deploy(ctx)


@celery_app.task(name="deployments.reconcile", acks_late=True, ignore_result=True)
def reconcile_deployments() -> dict[str, int]:
    """Compare desired and observed state of every live deployment; fix and report drift."""
    return reconcile_all()


@worker_process_shutdown.connect
def _close_backend(**_: Any) -> None:
    reset_backend()
