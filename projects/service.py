"""The projects domain's operations: projects, environments, deployments and rollbacks, env vars,
services, volumes, TCP proxies and config; the views the API returns.

Every slow operation (deploy, rollback, provision, delete) creates a job on the ``deploy`` queue
on the caller's session (``jobs.service.create_job``): it is sent once that session commits.
Status shown to users comes from the backend's observation, never from what the rows wish.
"""

from __future__ import annotations

import ipaddress
import json
import math
import secrets as pysecrets
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.orm import Session

from billing import service as billing
from common.errors import Conflict, NotFound, ValidationFailed
from common.timeutil import isoformat_z, utcnow
from jobs.service import create_job
from projects import repository
from projects.backends.base import (
    Artifact,
    BackendState,
    EnvironmentRef,
    Observation,
    ProjectBackendError,
    SourceSpec,
    TcpProxySpec,
    UnsupportedBuild,
    decrypt_env,
)
from projects.errors import DeployInProgress, ProjectNotFound, UnsupportedOnBackend
from projects.models import (
    Project,
    ProjectBinding,
    ProjectDeployment,
    ProjectEnvironment,
    ProjectEnvVar,
    ProjectTcpProxy,
    ProjectVolume,
)
from projects.runtime import get_backend
from projects.schemas import (
    ACTIVE_STATUSES,
    AllowEntry,
    DeployRequest,
    EnvironmentCreate,
    EnvironmentPatch,
    EnvVarsUpsert,
    ProjectBindingCreate,
    ProjectCreate,
    ProjectPatch,
    RollbackRequest,
    ServiceCreate,
    ServiceEnvPatch,
    ServicePatch,
    StorageCreate,
    TcpProxyCreate,
    VolumeCreate,
)
from resources import repository as resource_repo
from resources import service as resources
from resources.models import Resource
from resources.schemas import ResourceCreate
from resources.service import credential_box
from store import jobs as job_store
from store.jobs import JobStatus
from webhooks.events import emit

SECRET_MASK = "***"
TERMINAL = ("succeeded", "failed", "cancelled")


# ------------------------------------------------------------------------------ views ---
def iso(value: Any) -> str | None:
    return isoformat_z(value)


def project_view(session: Session, project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "object": "project",
        "name": project.name,
        "slug": project.slug,
        "git_repository": project.git_repository,
        "git_branch": project.git_branch,
        "build_pack": project.build_pack,
        "docker_image": project.docker_image,
        "port": project.port,
        "domain": project.domain,
        "health_check_path": project.health_check_path,
        "status": project.status,
        "environments": [environment_view(e) for e in repository.environments(session, project.id)],
        "created_at": iso(project.created_at),
        "updated_at": iso(project.updated_at),
    }


def environment_view(env: ProjectEnvironment) -> dict[str, Any]:
    return {
        "id": env.id,
        "object": "project_environment",
        "project_id": env.project_id,
        "name": env.name,
        "domain": env.domain,
        "replicas": env.replicas,
        "status": env.status,
        "active_deployment_id": env.active_deployment_id,
        "service_overrides": env.service_overrides,
        "created_at": iso(env.created_at),
    }


def deployment_view(dep: ProjectDeployment) -> dict[str, Any]:
    artifact = dep.artifact or {}
    return {
        "id": dep.id,
        "object": "project_deployment",
        "project_id": dep.project_id,
        "environment_id": dep.environment_id,
        "environment": dep.environment,
        "status": dep.status,
        "status_reason": dep.status_reason,
        "git_commit": dep.git_commit,
        "git_branch": dep.git_branch,
        "triggered_by": dep.triggered_by,
        "rollback_of": dep.rollback_of,
        "artifact": {
            k: artifact.get(k) for k in ("kind", "git_commit", "image", "reused", "built_at")
        }
        if artifact
        else None,
        "job_id": dep.job_id,
        "created_at": iso(dep.created_at),
        "started_at": iso(dep.started_at),
        "finished_at": iso(dep.finished_at),
    }


# ----------------------------------------------------------------------------- lookups ---
def get_project(session: Session, org_id: str, project_id: str, *, lock: bool = False) -> Project:
    project = repository.get_project(session, org_id, project_id, lock=lock)
    if project is None or project.status == "deleting":
        raise ProjectNotFound(f"Project {project_id!r} not found.")
    return project


def get_environment(
    session: Session,
    project: Project,
    name: str | None = None,
    *,
    env_id: str | None = None,
    lock: bool = False,
) -> ProjectEnvironment:
    env = repository.environment(
        session, project.id, name=name if env_id is None else None, env_id=env_id, lock=lock
    )
    if env is None:
        raise NotFound(f"Environment {(env_id or name)!r} of project {project.id} not found.")
    return env


def env_ref(project: Project, env: ProjectEnvironment) -> EnvironmentRef:
    return EnvironmentRef(
        org_id=project.org_id,
        project_id=project.id,
        project_slug=project.slug,
        environment_id=env.id,
        environment=env.name,
        domain=env.domain or (project.domain if env.name == "production" else None),
    )


def source_of(project: Project, commit: str | None = None) -> SourceSpec:
    return SourceSpec(
        git_repository=project.git_repository,
        git_branch=project.git_branch,
        git_commit=commit,
        build_pack=project.build_pack,  # type: ignore[arg-type]
        docker_image=project.docker_image,
    )


def state_of(env: ProjectEnvironment) -> BackendState | None:
    return BackendState.model_validate(env.state) if env.state else None


# ---------------------------------------------------------------------------- projects ---
def create_project(session: Session, org_id: str, body: ProjectCreate) -> Project:
    build_pack = body.build_pack or "procfile"
    source = SourceSpec(
        git_repository=body.git_repository,
        git_branch=body.git_branch,
        build_pack=build_pack,
        docker_image=body.docker_image,
    )
    try:
        get_backend().check_source(source)
    except UnsupportedBuild as exc:
        raise UnsupportedOnBackend(
            exc.message,
            details=[{"loc": ["body", "build_pack"], "msg": exc.message, "type": "value_error"}],
        ) from exc
    if repository.slug_taken(session, org_id, body.slug):
        raise Conflict(f"A project with slug {body.slug!r} exists in this organisation.")
    project = Project(
        org_id=org_id,
        name=body.name,
        slug=body.slug,
        git_repository=body.git_repository,
        git_branch=body.git_branch,
        build_pack=build_pack,
        docker_image=body.docker_image,
        port=body.port,
        domain=body.domain,
        health_check_path=body.health_check_path,
        config={},
        services={},
    )
    session.add(project)
    session.flush()
    session.add(
        ProjectEnvironment(
            org_id=org_id, project_id=project.id, name="production", service_overrides={}
        )
    )
    session.flush()
    return project


def patch_project(session: Session, project: Project, body: ProjectPatch) -> Project:
    for key, value in body.model_dump(exclude_unset=True).items():
        if value is not None or key == "domain":
            setattr(project, key, value)
    session.flush()
    return project


def delete_project(session: Session, project: Project) -> Project:
    """Mark the project deleting and queue the job that removes everything it owns."""
    if project.status != "deleting":
        project.status = "deleting"
        delete_owned_storage(session, project)
        for env in repository.environments(session, project.id):
            for dep in repository.active_deployments(session, env.id):
                cancel_deployment(session, project, dep.id)
        job = create_job(
            session, "project_delete", project.org_id, {"project_id": project.id}, quota=False
        )
        project.job_id = job.id
    session.flush()
    return project


# ------------------------------------------------------------------------ environments ---
def create_environment(
    session: Session, project: Project, body: EnvironmentCreate
) -> ProjectEnvironment:
    if repository.environment(session, project.id, name=body.name) is not None:
        raise Conflict(f"Environment {body.name!r} exists in project {project.id}.")
    env = ProjectEnvironment(
        org_id=project.org_id,
        project_id=project.id,
        name=body.name,
        domain=body.domain,
        replicas=body.replicas,
        service_overrides={},
        replica_seconds=0.0,
        replica_seconds_billed=0,
    )
    session.add(env)
    session.flush()
    return env


def patch_environment(
    session: Session, env: ProjectEnvironment, body: EnvironmentPatch
) -> ProjectEnvironment:
    for key, value in body.model_dump(exclude_unset=True).items():
        if value is not None or key == "domain":
            setattr(env, key, value)
    session.flush()
    return env


def provision(session: Session, project: Project, env: ProjectEnvironment) -> str:
    job = create_job(
        session,
        "project_provision",
        project.org_id,
        {"project_id": project.id, "environment_id": env.id},
        quota=False,
    )
    env.status = "provisioning"
    session.flush()
    return job.id


# ------------------------------------------------------------------------- deployments ---
def _claim_environment(session: Session, env: ProjectEnvironment, wait: bool) -> None:
    """Refuse a second deploy of an environment (409) unless the caller asked to wait (the job
    then starts once the earlier one has ended: never interleaved)."""
    active = repository.active_deployments(session, env.id)
    for dep in active:
        sync_with_job(session, dep)
    active = [d for d in active if d.status in ACTIVE_STATUSES]
    if active and not wait:
        raise DeployInProgress(
            f"Deployment {active[0].id} of environment {env.name!r} is {active[0].status}; "
            "wait for it, cancel it, or pass wait: true to queue behind it.",
            details={"deployment_id": active[0].id},
        )


def deploy(session: Session, project: Project, body: DeployRequest) -> ProjectDeployment:
    # Replicas spend replica-seconds: an organisation out of credit is refused before anything
    # is written (402); the plan's concurrency quota does not apply to an existing project.
    billing.check_credits(session, project.org_id, "project_deploy", {})
    env = get_environment(session, project, body.environment, lock=True)
    _claim_environment(session, env, body.wait)
    dep = ProjectDeployment(
        org_id=project.org_id,
        project_id=project.id,
        environment_id=env.id,
        environment=env.name,
        git_commit=body.git_commit,
        git_branch=project.git_branch,
        triggered_by="api",
        secret_keys=[],
        build_log=[],
    )
    session.add(dep)
    session.flush()
    job = create_job(
        session,
        "project_deploy",
        project.org_id,
        {"project_id": project.id, "environment_id": env.id, "deployment_id": dep.id},
        quota=False,
    )
    dep.job_id = job.id
    session.flush()
    return dep


def rollback(session: Session, project: Project, body: RollbackRequest) -> ProjectDeployment:
    billing.check_credits(session, project.org_id, "project_rollback", {})  # as ``deploy``
    source = repository.deployment(session, project.id, body.deployment_id)
    if source is None:
        raise NotFound(f"Deployment {body.deployment_id!r} of project {project.id} not found.")
    if source.artifact is None or source.release is None or source.status != "succeeded":
        raise Conflict(
            f"Deployment {source.id} is {source.status}: only a deployment that succeeded "
            "has an artifact and env snapshot to roll back to."
        )
    env = get_environment(session, project, env_id=source.environment_id, lock=True)
    _claim_environment(session, env, False)
    dep = ProjectDeployment(
        org_id=project.org_id,
        project_id=project.id,
        environment_id=env.id,
        environment=env.name,
        git_commit=source.git_commit,
        git_branch=source.git_branch,
        triggered_by="rollback",
        rollback_of=source.id,
        artifact=source.artifact,
        release=source.release,
        env_encrypted=source.env_encrypted,
        secret_keys=list(source.secret_keys),
        build_log=[],
    )
    session.add(dep)
    session.flush()
    job = create_job(
        session,
        "project_rollback",
        project.org_id,
        {"project_id": project.id, "environment_id": env.id, "deployment_id": dep.id},
        quota=False,
    )
    dep.job_id = job.id
    session.flush()
    return dep


def accepted_view(project: Project, dep: ProjectDeployment) -> dict[str, Any]:
    return {
        "deployment_id": dep.id,
        "status": dep.status,
        "environment": dep.environment,
        "rollback_of": dep.rollback_of,
        "links": {
            "job": f"/v1/jobs/{dep.job_id}",
            "deployment": f"/v1/projects/{project.id}/deployments/{dep.id}",
            "logs": f"/v1/projects/{project.id}/logs?deployment_id={dep.id}",
        },
    }


def sync_with_job(session: Session, dep: ProjectDeployment) -> ProjectDeployment:
    """A deployment row follows its job's terminal state: a job that failed or was cancelled
    without its handler recording it (worker lost, swept, cancelled while queued) ends the
    deployment too, so none stays ``queued`` forever."""
    if dep.status not in ACTIVE_STATUSES or dep.job_id is None:
        return dep
    status = job_store.status_of(session, dep.job_id)
    if status in (None, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.COMPLETED):
        dep.status = "cancelled" if status in (None, JobStatus.CANCELLED) else "failed"
        if status == JobStatus.COMPLETED:
            dep.status = "failed"
        dep.status_reason = dep.status_reason or f"job {dep.job_id} ended {status or 'deleted'}"
        dep.finished_at = dep.finished_at or utcnow()
        session.flush()
    return dep


def get_deployment(session: Session, project: Project, deployment_id: str) -> ProjectDeployment:
    dep = repository.deployment(session, project.id, deployment_id)
    if dep is None:
        raise NotFound(f"Deployment {deployment_id!r} of project {project.id} not found.")
    return sync_with_job(session, dep)


def cancel_deployment(session: Session, project: Project, deployment_id: str) -> ProjectDeployment:
    dep = get_deployment(session, project, deployment_id)
    if dep.status in ACTIVE_STATUSES:
        if dep.job_id is not None:
            job_store.transition(
                session,
                dep.job_id,
                to=JobStatus.CANCELLED,
                from_=[JobStatus.QUEUED, JobStatus.RUNNING],
            )
        dep.status = "cancelled"
        dep.status_reason = "cancelled by request"
        dep.finished_at = utcnow()
        session.flush()
    return dep


# ------------------------------------------------------------------------------ status ---
def observe(session: Session, project: Project, env: ProjectEnvironment) -> Observation:
    """The backend's observation of the environment; crashes it found (and restarted) are
    emitted as ``project.crashed``."""
    obs = get_backend().status(env_ref(project, env), state_of(env))
    for crash in obs.crashes:
        emit(
            session,
            "project.crashed",
            project.org_id,
            {
                "id": project.id,
                "project_id": project.id,
                "environment": env.name,
                "service": crash.service,
                "replica": crash.replica,
                "exit_code": crash.exit_code,
                "restarts": crash.restarts,
                "deployment_id": crash.deployment_id,
                "reason": mask(crash.message, secret_values(session, env)),
            },
        )
    if obs.crashes or obs.events:
        env.state = obs.state.model_dump()
    if env.active_deployment_id is not None and env.status != obs.status:
        env.status = obs.status  # the last observation: what ``deployment_status`` alerts watch
    accrue(session, env, obs.ready_replicas)
    return obs


def stop_environment(session: Session, project: Project, env: ProjectEnvironment) -> Observation:
    """Stop the environment's replicas (``stopped``), never deleting it: its configuration,
    volumes, env vars and history stay, and a deploy or a rollback starts it again. The
    replica-seconds up to now are accrued first."""
    if env.active_deployment_id is not None:
        observe(session, project, env)
    obs = get_backend().stop(env_ref(project, env), state_of(env))
    env.state = obs.state.model_dump()
    env.active_deployment_id = None
    env.accounted_at = None
    env.status = "stopped"
    session.flush()
    return obs


def accrue(session: Session, env: ProjectEnvironment, ready: int) -> None:
    """Replica-seconds: ready replicas times the time since the last observation, billed to the
    organisation's usage counter and to billing's usage events in whole seconds."""
    from plans.service import METRIC_REPLICA_SECONDS, record_usage

    now = utcnow()
    if env.accounted_at is not None and ready > 0:
        elapsed = max(0.0, (now - env.accounted_at).total_seconds())
        env.replica_seconds = (env.replica_seconds or 0.0) + elapsed * ready
        whole = math.floor(env.replica_seconds)
        billed = env.replica_seconds_billed or 0
        if whole > billed:
            record_usage(session, env.org_id, METRIC_REPLICA_SECONDS, whole - billed)
            # From the same durable counter, in the same transaction, keyed by the interval it
            # covers: an observation that rolls back or runs twice writes nothing twice.
            billing.record_usage(
                session,
                [
                    billing.Usage(
                        org_id=env.org_id,
                        meter="replica_seconds",
                        quantity=whole - billed,
                        dimension=env.name,
                        subject_type="project_environment",
                        subject_id=env.id,
                        occurred_at=now,
                        idempotency_key=f"project_environment:{env.id}:replica:{billed}-{whole}",
                    )
                ],
            )
            env.replica_seconds_billed = whole
    env.accounted_at = now if env.active_deployment_id else None


def status_view(project: Project, env: ProjectEnvironment, obs: Observation) -> dict[str, Any]:
    return {
        "status": obs.status,
        "status_reason": obs.reason,
        "environment": env.name,
        "replicas": {"ready": obs.ready_replicas, "desired": obs.desired_replicas},
        "services": [s.model_dump() for s in obs.services],
        "active_deployment_id": obs.active_deployment_id,
        "url": obs.url,
        "domain": env_ref(project, env).domain,
    }


# ---------------------------------------------------------------------------- env vars ---
def upsert_env_vars(session: Session, env: ProjectEnvironment, body: EnvVarsUpsert) -> None:
    box = credential_box()
    for item in body.vars:
        row = repository.env_var(session, env.id, item.key)
        token = box.encrypt({"v": item.value})
        if row is None:
            session.add(
                ProjectEnvVar(
                    org_id=env.org_id,
                    environment_id=env.id,
                    key=item.key,
                    value_encrypted=token,
                    secret=item.secret,
                )
            )
        else:
            row.value_encrypted = token
            row.secret = item.secret
    session.flush()


def delete_env_var(session: Session, env: ProjectEnvironment, key: str) -> None:
    row = repository.env_var(session, env.id, key)
    if row is None:
        raise NotFound(f"Env var {key!r} not set in environment {env.name!r}.")
    session.delete(row)
    session.flush()


def env_vars_view(session: Session, env: ProjectEnvironment) -> list[dict[str, Any]]:
    box = credential_box()
    return [
        {
            "key": row.key,
            "value": SECRET_MASK if row.secret else box.decrypt(row.value_encrypted)["v"],
            "secret": row.secret,
            "updated_at": iso(row.updated_at),
        }
        for row in repository.env_vars(session, env.id)
    ]


def env_snapshot(session: Session, env: ProjectEnvironment) -> tuple[dict[str, str], list[str]]:
    """The environment's env vars as a deploy injects them, and which keys are secret."""
    box = credential_box()
    values: dict[str, str] = {}
    secret_keys: list[str] = []
    for row in repository.env_vars(session, env.id):
        values[row.key] = str(box.decrypt(row.value_encrypted)["v"])
        if row.secret:
            secret_keys.append(row.key)
    return values, secret_keys


def secret_values(session: Session, env: ProjectEnvironment) -> list[str]:
    """Every secret value the environment had in its recent deployments or has now."""
    values, keys = env_snapshot(session, env)
    found = {values[k] for k in keys if values.get(k)}
    for dep in repository.recent_deployments(session, env.id):
        if dep.secret_keys and dep.env_encrypted:
            snap = decrypt_env(dep.env_encrypted)
            found |= {snap[k] for k in dep.secret_keys if snap.get(k)}
    return sorted(found, key=len, reverse=True)


def mask(text: str, values: Iterable[str]) -> str:
    for value in values:
        if len(value) >= 3:
            text = text.replace(value, SECRET_MASK)
    return text


# ---------------------------------------------------------------------------- services ---
def services_view(project: Project) -> list[dict[str, Any]]:
    return [
        {"id": s["id"], "name": name, **{k: v for k, v in s.items() if k != "id"}}
        for name, s in sorted(project.services.items())
    ]


def ensure_services(project: Project, artifact: Artifact) -> None:
    """A Procfile's process types become services on first deploy (``web`` gets the port)."""
    services = dict(project.services)
    for ptype in artifact.process_types:
        if ptype.name not in services:
            services[ptype.name] = {
                "id": f"svc_{pysecrets.token_hex(8)}",
                "command": None,
                "port": project.port if ptype.name == "web" else None,
                "replicas": None,
                "dockerfile_path": None,
            }
    project.services = services


def create_service(session: Session, project: Project, body: ServiceCreate) -> dict[str, Any]:
    if body.name in project.services:
        raise Conflict(f"Service {body.name!r} exists in project {project.id}.")
    services = dict(project.services)
    services[body.name] = {
        "id": f"svc_{pysecrets.token_hex(8)}",
        **body.model_dump(exclude={"name"}),
    }
    project.services = services
    session.flush()
    return get_service(project, body.name)


def get_service(project: Project, name: str) -> dict[str, Any]:
    found = project.services.get(name)
    if found is None:
        raise NotFound(f"Service {name!r} of project {project.id} not found.")
    return {"name": name, **found}


def patch_service(
    session: Session, project: Project, name: str, body: ServicePatch
) -> dict[str, Any]:
    current = get_service(project, name)
    services = dict(project.services)
    services[name] = {
        **{k: v for k, v in current.items() if k != "name"},
        **body.model_dump(exclude_unset=True),
    }
    project.services = services
    session.flush()
    return get_service(project, name)


def patch_service_env(
    session: Session, project: Project, name: str, env: ProjectEnvironment, body: ServiceEnvPatch
) -> dict[str, Any]:
    get_service(project, name)
    overrides = dict(env.service_overrides)
    overrides[name] = {**overrides.get(name, {}), **body.model_dump(exclude_unset=True)}
    env.service_overrides = overrides
    session.flush()
    return {"service": name, "environment": env.name, "overrides": overrides[name]}


def find_service(session: Session, org_id: str, service_id: str) -> tuple[Project, str]:
    cursor: str | None = None
    while True:
        projects, cursor = repository.list_projects(session, org_id, limit=100, cursor=cursor)
        for project in projects:
            for name, svc in project.services.items():
                if svc.get("id") == service_id:
                    return project, name
        if cursor is None:
            raise NotFound(f"Service {service_id!r} not found.")


# ----------------------------------------------------------------------------- volumes ---
def create_volume(session: Session, project: Project, body: VolumeCreate) -> ProjectVolume:
    if any(v.name == body.name for v in repository.volumes(session, project.id)):
        raise Conflict(f"Volume {body.name!r} exists in project {project.id}.")
    vol = ProjectVolume(
        org_id=project.org_id,
        project_id=project.id,
        name=body.name,
        mount_path=body.mount_path,
        size_gb=body.size_gb,
    )
    session.add(vol)
    session.flush()
    return vol


def volume_view(vol: ProjectVolume) -> dict[str, Any]:
    return {
        "id": vol.id,
        "name": vol.name,
        "mount_path": vol.mount_path,
        "size_gb": vol.size_gb,
        "created_at": iso(vol.created_at),
    }


def delete_volume(session: Session, project: Project, volume_id: str) -> None:
    for vol in repository.volumes(session, project.id):
        if vol.id == volume_id or vol.name == volume_id:
            session.delete(vol)
            session.flush()
            return
    raise NotFound(f"Volume {volume_id!r} of project {project.id} not found.")


# --------------------------------------------------------------------------- tcp proxy ---
def proxy_specs(session: Session, env: ProjectEnvironment) -> list[TcpProxySpec]:
    return [
        TcpProxySpec(
            id=p.id,
            service=p.service,
            external_port=p.external_port,
            target_port=p.target_port,
            allow=[str(a["cidr"]) for a in p.allowlist],
        )
        for p in repository.tcp_proxies(session, env.id)
        if p.enabled
    ]


def apply_proxies(session: Session, project: Project, env: ProjectEnvironment) -> None:
    state = get_backend().apply_tcp_proxies(
        env_ref(project, env), proxy_specs(session, env), state_of(env)
    )
    if state is not None:
        env.state = state.model_dump()


def create_tcp_proxy(
    session: Session, project: Project, service: str, body: TcpProxyCreate
) -> ProjectTcpProxy:
    """Open (or re-enable, on the port it kept) the service's TCP proxy."""
    env = get_environment(session, project, body.environment)
    for existing in repository.tcp_proxies(session, env.id):
        if existing.service == service:
            if not existing.enabled:
                existing.enabled = True
                session.flush()
                apply_proxies(session, project, env)
            return existing
    used = repository.used_external_ports(session)
    port = body.external_port
    if port is not None and port in used:
        raise Conflict(f"External port {port} is taken.")
    if port is None:
        from deployments.backends.local import free_port

        port = free_port()
        while port in used:
            port = free_port()
    proxy = ProjectTcpProxy(
        org_id=project.org_id,
        project_id=project.id,
        environment_id=env.id,
        service=service,
        external_port=port,
        target_port=body.target_port or project.port,
        allowlist=[],
        enabled=True,
    )
    session.add(proxy)
    session.flush()
    apply_proxies(session, project, env)
    return proxy


def tcp_proxy_view(proxy: ProjectTcpProxy) -> dict[str, Any]:
    return {
        "id": proxy.id,
        "service": proxy.service,
        "environment_id": proxy.environment_id,
        "external_port": proxy.external_port,
        "target_port": proxy.target_port,
        "allowlist": proxy.allowlist,
        "enabled": proxy.enabled,
        "created_at": iso(proxy.created_at),
    }


def service_proxy(session: Session, project: Project, service: str) -> ProjectTcpProxy:
    for env in repository.environments(session, project.id):
        for proxy in repository.tcp_proxies(session, env.id):
            if proxy.service == service:
                return proxy
    raise NotFound(f"Service {service!r} has no TCP proxy.")


def delete_tcp_proxy(
    session: Session, project: Project, service: str, *, permanent: bool = False
) -> None:
    """Disable the service's TCP proxy: nothing listens any more, but the external port stays
    the service's (re-enabling gets it back); ``permanent`` frees the port too."""
    proxy = service_proxy(session, project, service)
    env = get_environment(session, project, env_id=proxy.environment_id)
    if permanent:
        session.delete(proxy)
    else:
        proxy.enabled = False
    session.flush()
    apply_proxies(session, project, env)


def set_allowlist(
    session: Session,
    project: Project,
    service: str,
    entries: Sequence[AllowEntry],
    *,
    remove: str | None = None,
) -> ProjectTcpProxy:
    proxy = service_proxy(session, project, service)
    current = [a for a in proxy.allowlist if a["cidr"] != remove]
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry.cidr, strict=False)
        except ValueError as exc:
            raise ValidationFailed(f"Invalid CIDR {entry.cidr!r}.") from exc
        current = [a for a in current if a["cidr"] != str(network)]
        current.append({"cidr": str(network), "description": entry.description})
    proxy.allowlist = current
    session.flush()
    apply_proxies(session, project, get_environment(session, project, env_id=proxy.environment_id))
    return proxy


# ------------------------------------------------------------------------------ config ---
def set_config(session: Session, project: Project, entries: dict[str, str]) -> dict[str, str]:
    project.config = {**project.config, **entries}
    session.flush()
    return dict(project.config)


def delete_config(session: Session, project: Project, key: str) -> None:
    if key not in project.config:
        raise NotFound(f"Config key {key!r} not set.")
    project.config = {k: v for k, v in project.config.items() if k != key}
    session.flush()


__all__ = ["ProjectBackendError"]


# ---------------------------------------------------------------- bindings and storage ---
def _fingerprint(values: dict[str, str]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def _resource_env(res: Resource | None) -> dict[str, str] | None:
    """The resource's connection variables now (None while it is not ready)."""
    if res is None or res.secret_encrypted is None or res.status not in ("ready", "degraded"):
        return None
    return resources.env_for_binding(res, "")


def create_binding(
    session: Session, org_id: str, resource_id: str, body: ProjectBindingCreate
) -> ProjectBinding:
    res = resources.get(session, org_id, resource_id)
    env = repository.environment_any(session, body.project_environment_id)
    if env is None or env.org_id != org_id:
        raise NotFound(f"Project environment {body.project_environment_id!r} not found.")
    if repository.binding(session, env.id, res.id) is not None:
        raise Conflict(f"Resource {res.id} is already bound to environment {env.id}.")
    binding = ProjectBinding(
        org_id=org_id, environment_id=env.id, resource_id=res.id, role=body.role, kind="binding"
    )
    session.add(binding)
    session.flush()
    return binding


def binding_view(session: Session, binding: ProjectBinding) -> dict[str, Any]:
    res = resource_repo.get_any(session, binding.resource_id)
    current = _resource_env(res)
    return {
        "id": binding.id,
        "object": "project_binding",
        "resource_id": binding.resource_id,
        "resource_status": res.status if res is not None else "deleted",
        "project_environment_id": binding.environment_id,
        "role": binding.role,
        "kind": binding.kind,
        "name": binding.name,
        "env_names": sorted(current) if current is not None else [],
        # The credentials changed (a rotation) since the last deploy injected them.
        "stale": current is not None
        and binding.applied_fingerprint is not None
        and binding.applied_fingerprint != _fingerprint(current),
        "applied": binding.applied_fingerprint is not None,
        "created_at": iso(binding.created_at),
    }


def list_resource_bindings(session: Session, org_id: str, resource_id: str) -> list[ProjectBinding]:
    res = resources.get(session, org_id, resource_id)
    return list(repository.bindings_of_resource(session, res.id))


def delete_binding(session: Session, org_id: str, resource_id: str, binding_id: str) -> None:
    for binding in list_resource_bindings(session, org_id, resource_id):
        if binding.id == binding_id:
            session.delete(binding)
            session.flush()
            return
    raise NotFound(f"Binding {binding_id!r} not found.")


def bound_env(session: Session, env: ProjectEnvironment) -> dict[str, str]:
    """Every bound resource's variables, read fresh (a rotation reaches the next deploy); each
    binding records what it injected (its staleness is measured against that)."""
    values: dict[str, str] = {}
    for binding in repository.bindings_of_environment(session, env.id):
        current = _resource_env(resource_repo.get_any(session, binding.resource_id))
        if current is None:
            continue
        values.update(current)
        binding.applied_fingerprint = _fingerprint(current)
    return values


def create_storage(session: Session, project: Project, body: StorageCreate) -> ProjectBinding:
    env = get_environment(session, project, body.environment)
    for binding in repository.bindings_of_environment(session, env.id):
        if binding.kind == "storage" and binding.name == body.name:
            raise Conflict(f"Storage {body.name!r} exists in environment {env.name!r}.")
    res = resources.create(
        session,
        project.org_id,
        ResourceCreate(type="blob", name=f"{project.slug}-{env.name}-{body.name}"[:63]),
    )
    binding = ProjectBinding(
        org_id=project.org_id,
        environment_id=env.id,
        resource_id=res.id,
        role="readwrite",
        kind="storage",
        name=body.name,
    )
    session.add(binding)
    session.flush()
    return binding


def storage_of(session: Session, project: Project, environment: str | None) -> list[ProjectBinding]:
    envs = (
        [get_environment(session, project, environment)]
        if environment
        else list(repository.environments(session, project.id))
    )
    return [
        b
        for env in envs
        for b in repository.bindings_of_environment(session, env.id)
        if b.kind == "storage"
    ]


def delete_storage(session: Session, project: Project, name: str, environment: str) -> None:
    for binding in storage_of(session, project, environment):
        if binding.name == name:
            res = resource_repo.get_any(session, binding.resource_id)
            session.delete(binding)
            if res is not None:
                resources.delete(session, res, True)
            session.flush()
            return
    raise NotFound(f"Storage {name!r} not found in environment {environment!r}.")


def delete_owned_storage(session: Session, project: Project) -> None:
    """A deleted project's storage resources go with it (their own delete jobs)."""
    for binding in storage_of(session, project, None):
        res = resource_repo.get_any(session, binding.resource_id)
        if res is not None:
            resources.delete(session, res, True)
