"""The worker-side work of deployments: the ``deploy`` job (one lifecycle operation), the
reconciler (desired against observed state, orphans) and scale to zero.

Every status change goes through ``deployments.service`` (``begin_operation``,
``apply_observation``, ``mark_deleted``, ``fail``, ``scale_to_zero``, ``record_released``), and
the events they return are emitted on the session of the transaction that made them true. What a
backend does differently (a local backend frees a failed rollout's processes and kills orphans)
is the backend's own method, so nothing here asks which backend it is.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy.orm import Session

from common import redis_clients
from common.errors import JobFailed
from common.timeutil import utcnow
from config import get_settings
from deployments import metrics, repository, service
from deployments.backends.base import BackendState, Observation
from deployments.models import Deployment
from deployments.rollout import wait_for_rollout
from deployments.runtime import get_backend
from deployments.schemas import DeployJobInput
from jobs.context import JobCancelled, JobContext
from store.db import session_scope

log = logging.getLogger(__name__)


class Superseded(Exception):
    """A newer operation on the same deployment took over; this job stops quietly."""


def run_deploy(ctx: JobContext) -> dict[str, Any] | None:
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
        service.begin_operation(dep, job.operation)
        if job.operation == "apply":
            state = backend.reset_failures(state)  # an explicit operation tries afresh

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
        released = backend.release_failed(spec, obs.state)
        if released is not None:
            _release(ctx, released)
        reason = obs.reason or "rollout failed"
        raise JobFailed(reason, code=reason.split(":", 1)[0])
    return {"status": obs.status, "ready_replicas": obs.ready_replicas, "endpoint": obs.endpoint}


def _release(ctx: JobContext, released: Observation) -> None:
    """Record what a failed deployment's backend freed (its status stays failed)."""
    with session_scope() as session:
        dep = repository.get_any(session, ctx.input["deployment_id"], lock=True)
        if dep is not None and dep.job_id in (None, ctx.job_id):
            service.record_released(dep, released)


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


# --------------------------------------------------------------------------- reconciler ---
def reconcile_all() -> dict[str, int]:
    """Compare desired and observed state of every live deployment; fix and report drift, and
    remove what the backend runs that no deployment knows."""
    backend = get_backend()
    checked = 0
    with session_scope() as session:
        ids = list(repository.to_reconcile(session))
    for deployment_id in ids:
        try:
            checked += reconcile_one(deployment_id)
        except Exception:
            log.exception("reconciling deployment %s failed", deployment_id)
    with session_scope() as session:
        stored = [
            BackendState.model_validate(raw) if raw else None
            for raw in repository.live_backend_states(session, backend.name)
        ]
    killed = len(backend.remove_orphans(stored))
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
        last = metrics.last_request_at(redis_clients.client(), dep.id)
    except redis.RedisError:  # no idle clock: never scale down a deployment that may be busy
        log.warning("cannot read the idle clock of deployment %s", dep.id, exc_info=True)
        return
    now = utcnow()
    last_request = datetime.fromtimestamp(last, UTC) if last is not None else None
    idle = service.idle_seconds(session, dep, last_request, now)
    if idle >= idle_limit_s:
        service.scale_to_zero(dep, idle, now)
        log.info("deployment %s idle for %.0f s: scaled to zero", dep.id, idle)


def stop_for_credit(session: Session, org_id: str) -> list[str]:
    """Stop (never delete) the organisation's deployments that run or are meant to: billing's
    enforcement once it is out of credit past the grace period (``BILLING_SUSPENDERS``). The
    deployments keep their configuration; ``POST …/start`` brings them back."""
    stopped: list[str] = []
    for dep in repository.list_live_names(session, org_id):
        if dep.desired != "running":
            continue
        service.stop(session, service.get(session, org_id, dep.id, lock=True))
        service.schedule(session, dep, "stop")
        stopped.append(dep.id)
    return stopped
