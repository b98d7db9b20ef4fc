"""The rules of the deployments domain. Functions take the caller's session and never commit.

A deployment row is the desired state (`desired`, the current `revision`'s configuration) plus
what the backend last observed (`status`, `status_reason`, `endpoints`, `backend_state`). Every
lifecycle operation is a `deploy` job: `schedule()` creates the job row in the caller's
transaction (cancelling the operation it supersedes); it is sent when that transaction commits.
`apply_observation()` is the one place status changes, GPU-seconds accrue and events are
decided; the caller records the events it returns on the same session (`record`).

Status machine: pending → deploying → running | failed; running ⇄ degraded;
stopping → stopped; deleting → deleted.

Scale to zero: a deployment with `replicas_min == 0` that served no request for
`deploy_scale_to_zero_idle_seconds` is scaled to zero by the reconciler (`scale_to_zero`): it
stays `running` with `ready_replicas == 0`, `scaled_to_zero_at` set and a `scaled_to_zero:`
status_reason. The next request wakes it (`wake`: a `scale_up` deploy job; status `deploying`,
reason `scaling_from_zero: …`) and, like every request until a replica is ready, answers 503
`unavailable` with Retry-After.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, object_session

from billing import service as billing
from common.errors import Conflict, NotFound, Unavailable, ValidationFailed
from common.timeutil import isoformat_z, utcnow
from config import get_settings
from config.queues import DEPLOYMENT_ENV_PROVIDERS, resolve
from config.settings import Settings
from deployments import repository
from deployments.backends.base import (
    BackendState,
    DeploymentSpec,
    Observation,
    ReasonCode,
    derive_status,
    reason,
)
from deployments.catalog import find_template
from deployments.models import Deployment, DeploymentRevision
from deployments.schemas import DeploymentCreate, DeploymentPatch, Replicas, RuntimeOptions
from jobs.service import create_job
from store import jobs as job_store
from store.jobs import ACTIVE, JobStatus
from store.models import Job
from webhooks import events as webhook_events
from webhooks import secretbox

CONFIG_FIELDS = (
    "model",
    "model_path",
    "runtime",
    "gpu_type",
    "gpu_count",
    "replicas_min",
    "replicas_max",
    "runtime_options",
    "context_length",
)
MASK = "****"


@dataclass(frozen=True)
class Event:
    """A `deployment.*` event decided inside a transaction; :func:`record` emits it on that
    transaction's session (delivered once it commits)."""

    type: str
    org_id: str
    data: dict[str, Any]


def record(session: Session, events: list[Event]) -> None:
    """Emit ``events`` on ``session``: their webhook deliveries commit with the change."""
    for event in events:
        webhook_events.emit(session, event.type, event.org_id, event.data)


# ------------------------------------------------------------------------------- views ---
def links(dep: Deployment) -> dict[str, str | None]:
    base = f"/v1/deployments/{dep.id}"
    return {
        "self": base,
        "job": f"/v1/jobs/{dep.job_id}" if dep.job_id else None,
        "logs": f"{base}/logs",
        "metrics": f"{base}/metrics",
    }


def view(dep: Deployment) -> dict[str, Any]:
    """The deployment object of the API (env values masked)."""
    return {
        "id": dep.id,
        "name": dep.name,
        "model": dep.model,
        "runtime": dep.runtime,
        "gpu_type": dep.gpu_type,
        "gpu_count": dep.gpu_count,
        "replicas": {"min": dep.replicas_min, "max": dep.replicas_max},
        "ready_replicas": dep.ready_replicas,
        "scaled_to_zero": dep.scaled_to_zero_at is not None,
        "env": {key: MASK for key in dep.env_keys or []},
        "runtime_options": dep.runtime_options or {},
        "status": dep.status,
        "status_reason": dep.status_reason,
        "endpoint": dep.endpoint,
        "revision": dep.revision,
        "gpu_seconds": round(dep.gpu_seconds, 3),
        "created_at": isoformat_z(dep.created_at),
        "updated_at": isoformat_z(dep.updated_at),
        "links": links(dep),
    }


def env_of(dep: Deployment) -> dict[str, str]:
    if not dep.env_encrypted:
        return {}
    return dict(json.loads(secretbox.decrypt(dep.env_encrypted)))


def _encrypt_env(env: dict[str, str]) -> str | None:
    return secretbox.encrypt(json.dumps(env)) if env else None


def desired_replicas(dep: Deployment) -> int:
    """Replicas to run now: the minimum, but at least one while it is wanted running (none
    while it is scaled to zero)."""
    if dep.desired != "running" or dep.scaled_to_zero_at is not None:
        return 0
    return max(dep.replicas_min, 1)


def provided_env(dep: Deployment) -> dict[str, str]:
    """Other domains' variables for ``dep`` (``config.queues.DEPLOYMENT_ENV_PROVIDERS``: the
    bound resources'), read in the deployment's own session at each rollout; a deployment
    outside any session has none."""
    session = object_session(dep)
    if session is None:
        return {}
    env: dict[str, str] = {}
    for path in DEPLOYMENT_ENV_PROVIDERS:
        env.update(resolve(path)(session, dep.id))
    return env


def spec_of(dep: Deployment) -> DeploymentSpec:
    """What the backend runs: the revision's config; the deployment's own env wins a clash with
    a provided variable."""
    provided = provided_env(dep)
    return DeploymentSpec(
        id=dep.id,
        name=dep.name,
        model=dep.model,
        model_path=dep.model_path,
        runtime=dep.runtime,  # type: ignore[arg-type]
        gpu_type=dep.gpu_type,
        gpu_count=dep.gpu_count,
        replicas=desired_replicas(dep),
        env={**provided, **env_of(dep)},
        runtime_options=dep.runtime_options or {},
        context_length=dep.context_length,
        revision=dep.revision,
        org_id=dep.org_id,
    )


def state_of(dep: Deployment) -> BackendState | None:
    return BackendState.model_validate(dep.backend_state) if dep.backend_state else None


# ------------------------------------------------------------------------ operations ---
def get(session: Session, org_id: str, deployment_id: str, *, lock: bool = False) -> Deployment:
    dep = (
        repository.get(session, org_id, deployment_id, lock=lock)
        if len(deployment_id) <= 40
        else None
    )
    if dep is None:
        raise NotFound(f"Deployment {deployment_id!r} not found.")
    return dep


def create(session: Session, org_id: str, body: DeploymentCreate, settings: Settings) -> Deployment:
    template = find_template(settings, body.model)
    if template is None:
        raise ValidationFailed(
            f"Unknown model {body.model!r}; see GET /v1/models/templates.",
            details=[{"loc": ["body", "model"], "msg": "unknown model", "type": "value_error"}],
        )
    if repository.get_by_name(session, org_id, body.name) is not None:
        raise Conflict(f"A deployment named {body.name!r} already exists.")
    runtime = body.runtime or template.runtime
    gpu_count = body.gpu_count if body.gpu_count is not None else template.default_gpu_count
    options = body.runtime_options.model_dump(exclude_defaults=True)
    dep = Deployment(
        org_id=org_id,
        name=body.name,
        model=template.name,
        model_path=template.source,
        runtime=runtime,
        gpu_type=body.gpu_type or template.default_gpu_type,
        gpu_count=gpu_count,
        replicas_min=body.replicas.min,
        replicas_max=body.replicas.max,
        env_encrypted=_encrypt_env(body.env),
        env_keys=sorted(body.env),
        runtime_options=options,
        context_length=options.get("max_model_len") or template.context_length,
        revision=1,
        desired="running",
        status="pending",
        backend=settings.deploy_backend,
        endpoints=[],
    )
    session.add(dep)
    session.flush()
    _snapshot(session, dep, "created")
    return dep


def _snapshot(session: Session, dep: Deployment, reason: str) -> None:
    config = {name: getattr(dep, name) for name in CONFIG_FIELDS}
    config["env_keys"] = list(dep.env_keys or [])
    session.add(
        DeploymentRevision(
            deployment_id=dep.id,
            revision=dep.revision,
            config=config,
            env_encrypted=dep.env_encrypted,
            reason=reason,
        )
    )


def _ensure_live(dep: Deployment) -> None:
    if dep.desired == "deleted":
        raise Conflict(f"Deployment {dep.id} is {dep.status}.")


def patch(session: Session, dep: Deployment, body: DeploymentPatch) -> Deployment:
    """Apply a change as a new revision (rolled out by the next deploy job)."""
    _ensure_live(dep)
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise ValidationFailed("Nothing to change.", details=[])
    if body.replicas is not None:
        dep.replicas_min, dep.replicas_max = body.replicas.min, body.replicas.max
    if body.runtime is not None:
        dep.runtime = body.runtime
    if "gpu_type" in changes:
        dep.gpu_type = body.gpu_type
    if body.gpu_count is not None:
        dep.gpu_count = body.gpu_count
    if body.env is not None:
        dep.env_encrypted = _encrypt_env(body.env)
        dep.env_keys = sorted(body.env)
    if body.runtime_options is not None:
        dep.runtime_options = body.runtime_options.model_dump(exclude_defaults=True)
        dep.context_length = dep.runtime_options.get("max_model_len") or dep.context_length
    dep.revision += 1
    dep.scaled_to_zero_at = None  # an explicit operation starts replicas again
    _snapshot(session, dep, "updated: " + ", ".join(sorted(changes)))
    if dep.desired == "running":
        dep.status = "deploying"
    return dep


def rollback(session: Session, dep: Deployment, revision: int) -> Deployment:
    """A new revision with the configuration (and env) of an earlier one."""
    _ensure_live(dep)
    old = repository.get_revision(session, dep.id, revision)
    if old is None or revision >= dep.revision + 1:
        raise NotFound(f"Revision {revision} of deployment {dep.id} not found.")
    for name in CONFIG_FIELDS:
        setattr(dep, name, old.config[name])
    dep.env_encrypted = old.env_encrypted
    dep.env_keys = list(old.config.get("env_keys", []))
    dep.revision += 1
    dep.scaled_to_zero_at = None
    _snapshot(session, dep, f"rollback to revision {revision}")
    if dep.desired == "running":
        dep.status = "deploying"
    return dep


def stop(session: Session, dep: Deployment) -> Deployment:
    _ensure_live(dep)
    dep.desired = "stopped"
    dep.scaled_to_zero_at = None
    if dep.status != "stopped":
        dep.status = "stopping"
    return dep


def start(session: Session, dep: Deployment) -> Deployment:
    _ensure_live(dep)
    dep.desired = "running"
    dep.status = "pending"
    dep.status_reason = None
    dep.scaled_to_zero_at = None
    return dep


def delete(session: Session, dep: Deployment) -> bool:
    """Mark for deletion; False when it already is (DELETE is idempotent)."""
    if dep.desired == "deleted":
        return False
    dep.desired = "deleted"
    dep.status = "deleting"
    return True


def schedule(session: Session, dep: Deployment, operation: str) -> str:
    """Create the deploy job for `operation` (cancelling the one it supersedes); return its id.

    The job is sent when the caller's transaction commits. Only `apply` counts against the
    plan's quota: stopping, deleting and waking free or reuse what it counts.
    """
    if dep.job_id:
        job_store.transition(session, dep.job_id, to=JobStatus.CANCELLED, from_=list(ACTIVE))
    job = create_job(
        session,
        "deploy",
        dep.org_id,
        {"deployment_id": dep.id, "operation": operation, "revision": dep.revision},
        quota=operation == "apply",
    )
    dep.job_id = job.id
    return job.id


def rollout_overdue(session: Session, dep: Deployment, deadline_s: float) -> bool:
    """True when a deployment is still coming up past its operation's deadline."""
    if dep.status not in ("pending", "deploying") or not dep.job_id:
        return False
    job = session.get(Job, dep.job_id)
    if job is None:
        return False
    return (utcnow() - job.created_at).total_seconds() > deadline_s


def job_active(session: Session, dep: Deployment) -> bool:
    if not dep.job_id:
        return False
    return job_store.status_of(session, dep.job_id) in ACTIVE


# --------------------------------------------------------------------- observations ---
def _accrue(session: Session, dep: Deployment, now: datetime) -> None:
    """GPU-seconds: ready replicas * GPUs (a CPU replica counts as one) * elapsed time."""
    from plans.service import METRIC_GPU_SECONDS, record_usage

    if dep.accounted_at is not None and dep.ready_replicas > 0:
        elapsed = max(0.0, (now - dep.accounted_at).total_seconds())
        dep.gpu_seconds += elapsed * dep.ready_replicas * max(dep.gpu_count, 1)
        whole = math.floor(dep.gpu_seconds)
        if whole > dep.gpu_seconds_billed:
            record_usage(session, dep.org_id, METRIC_GPU_SECONDS, whole - dep.gpu_seconds_billed)
            # Metered from the same durable counter, in the same transaction, keyed by the
            # interval it covers: a reconcile that rolls back or runs twice writes nothing twice.
            billing.record_usage(
                session,
                [
                    billing.Usage(
                        org_id=dep.org_id,
                        meter="gpu_seconds",
                        quantity=whole - dep.gpu_seconds_billed,
                        dimension=dep.gpu_type or get_settings().billing_gpu_type,
                        subject_type="deployment",
                        subject_id=dep.id,
                        occurred_at=now,
                        idempotency_key=f"deployment:{dep.id}:gpu:{dep.gpu_seconds_billed}-{whole}",
                    )
                ],
            )
            dep.gpu_seconds_billed = whole
    dep.accounted_at = now


EVENT_OF_STATUS = {
    "running": "deployment.running",
    "failed": "deployment.failed",
    "degraded": "deployment.degraded",
    "stopped": "deployment.stopped",
    "deleted": "deployment.deleted",
}


def apply_observation(
    session: Session, dep: Deployment, obs: Observation, now: datetime | None = None
) -> list[Event]:
    """Store what the backend saw; return the events its status change causes."""
    now = now or utcnow()
    _accrue(session, dep, now)
    previous = dep.status
    status = derive_status(previous, obs)
    dep.status = status
    dep.status_reason = _status_reason(dep, status, obs)
    dep.ready_replicas = obs.ready_replicas
    dep.endpoints = list(obs.endpoints)
    dep.endpoint = obs.endpoint
    dep.backend_state = obs.state.model_dump(mode="json")
    dep.updated_at = now
    return status_events(dep, previous)


def _status_reason(dep: Deployment, status: str, obs: Observation) -> str | None:
    if status == "running" and dep.scaled_to_zero_at is not None:
        return dep.status_reason  # the scaled_to_zero reason stays while it runs no replica
    if status in ("running", "stopped"):
        return None
    if status == "deploying" and (dep.status_reason or "").startswith(ReasonCode.SCALING_FROM_ZERO):
        return reason(ReasonCode.SCALING_FROM_ZERO, obs.reason or "starting a replica")
    return obs.reason


def status_events(dep: Deployment, previous: str) -> list[Event]:
    event = EVENT_OF_STATUS.get(dep.status)
    if event is None or dep.status == previous:
        return []
    return [Event(event, dep.org_id, view(dep))]


def begin_operation(dep: Deployment, operation: str) -> None:
    """A deploy job starts ``operation``: an ``apply`` deploys afresh (its old reason goes), a
    ``scale_up`` keeps the ``scaling_from_zero`` reason its wake set."""
    if operation == "apply":
        dep.status, dep.status_reason = "deploying", None
    elif operation == "scale_up":
        dep.status = "deploying"


def record_released(dep: Deployment, obs: Observation) -> None:
    """What a failed deployment still held was freed (``Backend.release_failed``): store the
    backend's state; the status stays ``failed``."""
    dep.backend_state = obs.state.model_dump(mode="json")
    dep.ready_replicas, dep.endpoint, dep.endpoints = 0, None, []


def mark_deleted(dep: Deployment, now: datetime | None = None) -> list[Event]:
    previous = dep.status
    dep.status = "deleted"
    dep.status_reason = None
    dep.deleted_at = now or utcnow()
    dep.ready_replicas = 0
    dep.endpoint = None
    dep.endpoints = []
    dep.backend_state = None
    return status_events(dep, previous)


def fail(dep: Deployment, reason: str) -> list[Event]:
    previous = dep.status
    dep.status = "failed"
    dep.status_reason = reason
    dep.ready_replicas = 0
    dep.endpoint = None
    dep.endpoints = []
    return status_events(dep, previous)


# ---------------------------------------------------------------------------- serving ---
def serving(dep: Deployment) -> list[str] | None:
    """The endpoints that may take a request now; None when the deployment cannot serve."""
    endpoints = list(dep.endpoints or [])
    if dep.status in ("running", "degraded") and endpoints and dep.scaled_to_zero_at is None:
        return endpoints
    return None


def unavailable(dep: Deployment) -> Unavailable:
    """The 503 of a deployment that exists but cannot serve now (never a 404)."""
    scaling = dep.scaled_to_zero_at is not None or (dep.status_reason or "").startswith(
        ReasonCode.SCALING_FROM_ZERO
    )
    retry_after = 30 if dep.status in ("stopped", "stopping", "failed") else 5
    what = "scaling from zero (a replica is starting)" if scaling else dep.status
    return Unavailable(
        f"Deployment {dep.name!r} is {what} and cannot serve requests now; "
        f"retry in {retry_after} s.",
        details={"deployment_id": dep.id, "status": dep.status, "scaling_from_zero": scaling},
        headers={"Retry-After": str(retry_after)},
    )


def wake(session: Session, dep: Deployment) -> str | None:
    """A request for a deployment scaled to zero: schedule its `scale_up` job (sent when the
    caller commits) and return its id. None when another request already woke it."""
    if dep.scaled_to_zero_at is None or not repository.claim_wake(session, dep.id):
        return None
    dep.scaled_to_zero_at = None
    dep.status = "deploying"
    dep.status_reason = reason(ReasonCode.SCALING_FROM_ZERO, "a request arrived")
    return schedule(session, dep, "scale_up")


def may_scale_to_zero(session: Session, dep: Deployment) -> bool:
    """True for a deployment allowed to run no replica that runs some and has no operation
    going on."""
    return (
        dep.desired == "running"
        and dep.replicas_min == 0
        and dep.scaled_to_zero_at is None
        and dep.status in ("running", "degraded")
        and not job_active(session, dep)
    )


def idle_seconds(
    session: Session, dep: Deployment, last_request: datetime | None, now: datetime
) -> float:
    """Seconds since the deployment's last request or last operation (create, start, update,
    wake: its latest deploy job), whichever is later."""
    since = dep.created_at
    job = session.get(Job, dep.job_id) if dep.job_id else None
    if job is not None:
        since = max(since, job.completed_at or job.created_at)
    if last_request is not None:
        since = max(since, last_request)
    return (now - since).total_seconds()


def scale_to_zero(dep: Deployment, idle_s: float, now: datetime) -> None:
    """Mark an idle deployment scaled to zero; the caller reconciles it (its replicas stop)."""
    dep.scaled_to_zero_at = now
    dep.status_reason = reason(
        ReasonCode.SCALED_TO_ZERO,
        f"no requests for {idle_s:.0f} s; the next request starts a replica",
    )


def revision_views(session: Session, dep: Deployment) -> list[dict[str, Any]]:
    return [
        {
            "revision": rev.revision,
            "reason": rev.reason,
            "config": {
                **rev.config,
                "replicas": Replicas(
                    min=rev.config["replicas_min"], max=rev.config["replicas_max"]
                ).model_dump(),
                "runtime_options": RuntimeOptions.model_validate(
                    rev.config.get("runtime_options") or {}
                ).model_dump(exclude_defaults=True),
            },
            "created_at": isoformat_z(rev.created_at),
            "current": rev.revision == dep.revision,
        }
        for rev in repository.revisions(session, dep.id)
    ]
