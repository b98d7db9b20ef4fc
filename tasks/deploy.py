"""Deploy queue tasks: `deploy.run` (one lifecycle operation as a job) and the reconciler beat.

Both are thin: load the deployment, call the backend, store the observation through
`deployments.service.apply_observation` and record the events it returned on the same session.
The reconciler also scales idle deployments with replicas.min 0 to zero
(`deployments.service.scale_to_zero`); a request wakes them with a `scale_up` job.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import redis
from celery.signals import worker_process_shutdown
from sqlalchemy.orm import Session

from common.errors import JobFailed
from common.timeutil import utcnow
from config import get_settings
from deployments import metrics, repository, service
from deployments.backends.base import BackendState, Observation
from deployments.backends.local import LocalBackend, replica_ids
from deployments.models import Deployment
from deployments.rollout import wait_for_rollout
from deployments.runtime import get_backend, reset_backend
from deployments.schemas import DeployJobInput
from store.db import session_scope
from tasks.runner import JobCancelled, JobContext, job_task
from workers.app import celery_app

log = logging.getLogger(__name__)


class Superseded(Exception):
    """A newer operation on the same deployment took over; this job stops quietly."""


@job_task("deploy")
def deploy(ctx: JobContext) -> dict[str, Any] | None:
    """Apply, stop or delete one deployment; a rollout waits (with a deadline) until running."""
    job = DeployJobInput.model_validate(ctx.input)
    settings = get_settings()
    backend = get_backend()
    with session_scope() as session:
        dep = repository.get_any(session, job.deployment_id, lock=True)
        if dep is None:
            raise JobFailed(f"Deployment {job.deployment_id} not found.", code="not_found")
        if dep.job_id not in (None, ctx.job_id):
            return {"superseded_by": dep.job_id}
        spec, state = service.spec_of(dep), service.state_of(dep)
        if job.operation == "apply":
            dep.status, dep.status_reason = "deploying", None
            state = backend.reset_failures(state)  # an explicit operation tries afresh
        elif job.operation == "scale_up":
            dep.status = "deploying"  # its reason (scaling_from_zero) was set by the wake

    if job.operation == "stop":
        obs = backend.stop(spec, state)
        _store(ctx, obs)
        return {"status": "stopped"}
    if job.operation == "delete":
        backend.delete(spec, state)
        with session_scope() as session:
            dep = repository.get_any(session, job.deployment_id, lock=True)
            if dep is not None:
                service.record(session, service.mark_deleted(dep))
        return {"status": "deleted"}

    try:
        obs = wait_for_rollout(
            backend,
            spec,
            state,
            deadline_s=settings.deploy_rollout_deadline_seconds,
            poll_s=settings.deploy_poll_seconds,
            cancelled=lambda: ctx.cancelled(min_interval=1.0),
            on_observation=ChangedObservations(ctx).store,
        )
    except Superseded:
        return {"superseded": True}
    if ctx.cancelled():
        raise JobCancelled(ctx.job_id)
    if obs.status == "failed":
        if isinstance(backend, LocalBackend):
            _release(ctx, backend.stop(spec, obs.state))  # a failed rollout keeps no process
        reason = obs.reason or "rollout failed"
        raise JobFailed(reason, code=reason.split(":", 1)[0])
    return {"status": obs.status, "ready_replicas": obs.ready_replicas, "endpoint": obs.endpoint}


def _release(ctx: JobContext, stopped: Observation) -> None:
    """Record that a failed deployment's replicas were stopped (its status stays failed)."""
    with session_scope() as session:
        dep = repository.get_any(session, ctx.input["deployment_id"], lock=True)
        if dep is not None and dep.job_id in (None, ctx.job_id):
            dep.backend_state = stopped.state.model_dump(mode="json")
            dep.ready_replicas, dep.endpoint, dep.endpoints = 0, None, []


class ChangedObservations:
    """Stores a rollout's observations when they change (or every few seconds), not each poll."""

    def __init__(self, ctx: JobContext, heartbeat_s: float = 5.0) -> None:
        self.ctx = ctx
        self.heartbeat_s = heartbeat_s
        self.last: str | None = None
        self.stored_at = 0.0

    def store(self, obs: Observation) -> None:
        fingerprint = obs.model_dump_json(exclude={"events"})
        now = time.monotonic()
        if fingerprint == self.last and now - self.stored_at < self.heartbeat_s:
            return
        _store(self.ctx, obs)
        self.last, self.stored_at = fingerprint, now


def _store(ctx: JobContext, obs: Observation) -> None:
    with session_scope() as session:
        dep = repository.get_any(session, ctx.input["deployment_id"], lock=True)
        if dep is None or dep.job_id not in (None, ctx.job_id):
            raise Superseded()
        service.record(session, service.apply_observation(session, dep, obs))


@celery_app.task(name="deployments.reconcile", acks_late=True, ignore_result=True)
def reconcile_deployments() -> dict[str, int]:
    """Compare desired and observed state of every live deployment; fix and report drift."""
    return reconcile_all()


def reconcile_all() -> dict[str, int]:
    backend = get_backend()
    checked = 0
    with session_scope() as session:
        ids = list(repository.to_reconcile(session))
    for deployment_id in ids:
        try:
            checked += reconcile_one(deployment_id)
        except Exception:
            log.exception("reconciling deployment %s failed", deployment_id)
    killed = 0
    if isinstance(backend, LocalBackend):
        with session_scope() as session:
            known: set[str] = set()
            for raw in repository.live_backend_states(session, backend.name):
                known |= replica_ids(BackendState.model_validate(raw) if raw else None)
        killed = len(backend.sweep_orphans(known))
    return {"checked": checked, "orphans_killed": killed}


def reconcile_one(deployment_id: str) -> int:
    """Reconcile one deployment unless a deploy job is working on it. Returns 1 if checked."""
    backend = get_backend()
    with session_scope() as session:
        dep = repository.get_any(session, deployment_id, lock=True)
        if dep is None or dep.desired != "running" or service.job_active(session, dep):
            return 0
        if dep.status == "failed":
            return 0
        settings = get_settings()
        if service.rollout_overdue(session, dep, settings.deploy_rollout_deadline_seconds):
            # Its job is gone (cancelled, reaped) and it never came up: fail it, don't loop.
            events = service.fail(dep, f"rollout_timeout: {dep.status_reason or 'not running'}")
        else:
            if service.may_scale_to_zero(session, dep):
                _scale_down_if_idle(session, dep, settings.deploy_scale_to_zero_idle_seconds)
            obs = backend.reconcile(service.spec_of(dep), service.state_of(dep))
            events = service.apply_observation(session, dep, obs)
        service.record(session, events)
    return 1


def _scale_down_if_idle(session: Session, dep: Deployment, idle_limit_s: float) -> None:
    try:
        last = metrics.last_request_at(_redis(), dep.id)
    except redis.RedisError:  # no idle clock: never scale down a deployment that may be busy
        log.warning("cannot read the idle clock of deployment %s", dep.id, exc_info=True)
        return
    now = utcnow()
    last_request = datetime.fromtimestamp(last, UTC) if last is not None else None
    idle = service.idle_seconds(session, dep, last_request, now)
    if idle >= idle_limit_s:
        service.scale_to_zero(dep, idle, now)
        log.info("deployment %s idle for %.0f s: scaled to zero", dep.id, idle)


def _redis() -> redis.Redis:
    return _redis_for(get_settings().resolved_redis_url())


@lru_cache(maxsize=4)
def _redis_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5.0)


@worker_process_shutdown.connect
def _close_backend(**_: Any) -> None:
    reset_backend()
