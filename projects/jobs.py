"""The worker-side work of app projects: deploy (build + rollout), rollback (rollout of a stored
release), provision, delete, and the supervisor (crashed replicas restarted, ``project.crashed``).

A deployment row follows its job: every exit of a handler (success, failure, cancellation, an
unexpected exception) records the deployment's terminal status before the job's own outcome is
recorded, and ``service.sync_with_job`` catches the rest (a worker lost mid-job).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.orm import Session

from common.errors import JobFailed
from common.timeutil import utcnow
from config import get_settings
from jobs.context import JobCancelled, JobContext
from projects import repository, service
from projects.backends.base import (
    Artifact,
    BuildSpec,
    Observation,
    ProjectBackendError,
    ReasonCode,
    ReleaseSpec,
    ServiceResources,
    ServiceSpec,
    VolumeSpec,
    decrypt_env,
    encrypt_env,
    reason,
)
from projects.models import Project, ProjectDeployment, ProjectEnvironment
from projects.runtime import get_backend
from projects.schemas import ACTIVE_STATUSES, ProjectJobInput
from store.db import session_scope
from webhooks.events import emit

log = logging.getLogger(__name__)
BUILD_LOG_MAX = 2000


def _load(
    session: Session, job: ProjectJobInput
) -> tuple[Project, ProjectEnvironment, ProjectDeployment]:
    dep = repository.deployment_any(session, str(job.deployment_id), lock=True)
    project = repository.get_project_any(session, job.project_id)
    env = repository.environment_any(session, str(job.environment_id))
    if dep is None or project is None or env is None:
        raise JobFailed(f"Deployment {job.deployment_id} not found.", code="not_found")
    return project, env, dep


def _event(
    session: Session, event: str, project: Project, dep: ProjectDeployment, **extra: Any
) -> None:
    emit(
        session,
        event,
        project.org_id,
        {
            "id": dep.id,
            "project_id": project.id,
            "environment": dep.environment,
            "status": dep.status,
            "git_commit": dep.git_commit,
            "rollback_of": dep.rollback_of,
            **extra,
        },
        job_id=dep.job_id,
    )


def services_for(
    project: Project, env: ProjectEnvironment, artifact: Artifact
) -> list[ServiceSpec]:
    """The release's services: the artifact's process types and the services declared, with the
    environment's replicas (web) and per-environment overrides applied."""
    commands = {p.name: p.command for p in artifact.process_types}
    declared = dict(project.services)
    names = list(dict.fromkeys([*commands, *declared]))
    out: list[ServiceSpec] = []
    for name in names:
        svc = declared.get(name, {})
        over = env.service_overrides.get(name, {})
        command = svc.get("command") or commands.get(name)
        if not command:
            continue
        default_replicas = env.replicas if name == "web" else 1
        replicas = over.get("replicas", svc.get("replicas"))
        out.append(
            ServiceSpec(
                id=svc.get("id"),
                name=name,
                command=command,
                port=over.get("port")
                or svc.get("port")
                or (project.port if name == "web" else None),
                replicas=default_replicas if replicas is None else int(replicas),
                resources=ServiceResources(cpu=over.get("cpu"), memory=over.get("memory")),
            )
        )
    return out


def _wait_turn(ctx: JobContext, job: ProjectJobInput) -> None:
    """Deploys of one environment run one after the other: wait for earlier ones to end."""
    while True:
        with session_scope() as session:
            dep = repository.deployment_any(session, str(job.deployment_id))
            if dep is None:
                return
            earlier = repository.active_deployments(session, dep.environment_id, before=dep)
            for other in earlier:
                service.sync_with_job(session, other)
            if not [d for d in earlier if d.status in ACTIVE_STATUSES]:
                return
        ctx.check_cancelled(min_interval=0.5)
        time.sleep(0.3)


def run_deploy(ctx: JobContext) -> dict[str, Any] | None:
    """Build (unless a rollback) and roll out one deployment of one environment."""
    job = ProjectJobInput.model_validate(ctx.input)
    marks = [("start", time.monotonic())]
    _wait_turn(ctx, job)
    marks.append(("turn", time.monotonic()))
    backend = get_backend()
    settings = get_settings()
    with session_scope() as session:
        project, env, dep = _load(session, job)
        if dep.status not in ACTIVE_STATUSES:
            return {"status": dep.status}
        rollback_source = dep.rollback_of
        dep.status = "deploying" if rollback_source else "building"
        dep.started_at = utcnow()
        ref = service.env_ref(project, env)
        source = service.source_of(project, dep.git_commit)
        if rollback_source is None:
            values, secret_keys = service.env_snapshot(session, env)
            bound = service.bound_env(session, env)  # resources' variables; own vars win
            secret_keys = sorted({*secret_keys, *(k for k in bound if k not in values)})
            values = {**bound, **values}
            dep.env_encrypted = encrypt_env(values)
            dep.secret_keys = secret_keys
            volumes = [
                VolumeSpec(id=v.id, name=v.name, mount_path=v.mount_path, size_gb=v.size_gb)
                for v in repository.volumes(session, project.id)
            ]
        else:
            values, secret_keys = decrypt_env(dep.env_encrypted), list(dep.secret_keys)
            volumes = []
        secrets = service.secret_values(session, env) + [
            values[k] for k in secret_keys if values.get(k)
        ]
        proxies = service.proxy_specs(session, env)
        _event(session, "project.deploy.started", project, dep)
        release_stored = dep.release
        artifact_stored = dep.artifact
    lines: list[str] = []

    def sink(line: str) -> None:
        lines.append(service.mask(line, secrets))
        if len(lines) % 50 == 0:
            _store_build_log(job, lines)

    marks.append(("prepare", time.monotonic()))
    try:
        if rollback_source is None:
            artifact = backend.build(
                BuildSpec(
                    deployment_id=str(job.deployment_id),
                    env=ref,
                    source=source,
                    build_env=values,
                    secret_keys=secret_keys,
                ),
                sink,
            )
            marks.append(("build", time.monotonic()))
            with session_scope() as session:
                project, env, dep = _load(session, job)
                service.ensure_services(project, artifact)
                release = ReleaseSpec(
                    deployment_id=dep.id,
                    env=ref,
                    artifact=artifact,
                    services=services_for(project, env, artifact),
                    env_vars=values,
                    secret_keys=secret_keys,
                    health_check_path=project.health_check_path,
                    port=project.port,
                    volumes=volumes,
                    tcp_proxies=proxies,
                )
                dep.artifact = artifact.model_dump()
                dep.git_commit = artifact.git_commit
                dep.release = release.model_dump(exclude={"env_vars"})
                dep.status = "deploying"
                dep.build_log = lines[-BUILD_LOG_MAX:]
        else:
            assert release_stored is not None and artifact_stored is not None
            release = ReleaseSpec.model_validate(
                {
                    **release_stored,
                    "env_vars": values,
                    "deployment_id": job.deployment_id,
                    "rollback_of": rollback_source,
                    "env": ref.model_dump(),
                    "tcp_proxies": proxies,
                }
            )
            sink(f"rolling back to {rollback_source} (commit {release.artifact.git_commit})")
        ctx.check_cancelled()
        marks.append(("record", time.monotonic()))
        if rollback_source is not None:
            obs = backend.rollback(
                release, None, timeout_s=settings.projects_rollout_timeout_seconds
            )
        else:
            obs = backend.rollout(
                release, None, timeout_s=settings.projects_rollout_timeout_seconds
            )
    except JobCancelled:
        _finish(job, "cancelled", "cancelled by request", lines, None)
        raise
    except ProjectBackendError as exc:
        why = service.mask(reason(exc.code, exc.message), secrets)
        _finish(job, "failed", why, lines, None)
        raise JobFailed(why, code=exc.code) from exc
    except Exception as exc:
        why = service.mask(
            reason(ReasonCode.BACKEND_ERROR, f"{type(exc).__name__}: {exc}"), secrets
        )
        _finish(job, "failed", why, lines, None)
        raise
    marks.append(("rollout", time.monotonic()))
    log.info(
        "deployment %s: %s",
        job.deployment_id,
        ", ".join(f"{name} {t - marks[i][1]:.3f}s" for i, (name, t) in enumerate(marks[1:])),
    )
    if _project_gone(job):  # deleted meanwhile: what this rollout started goes too
        backend.teardown(ref, None)
        _finish(job, "cancelled", "the project was deleted", lines, None)
        raise JobCancelled(ctx.job_id)
    if obs.status == "failed":
        why = service.mask(obs.reason or "rollout failed", secrets)
        _finish(job, "failed", why, lines, obs)
        raise JobFailed(why, code=why.split(":", 1)[0])
    _finish(job, "succeeded", None, lines, obs)
    return {
        "deployment_id": job.deployment_id,
        "status": "succeeded",
        "git_commit": release.artifact.git_commit,
        "ready_replicas": obs.ready_replicas,
        "rollback_of": rollback_source,
    }


def _project_gone(job: ProjectJobInput) -> bool:
    with session_scope() as session:
        project = repository.get_project_any(session, job.project_id)
        return project is None or project.status == "deleting"


def _store_build_log(job: ProjectJobInput, lines: list[str]) -> None:
    with session_scope() as session:
        dep = repository.deployment_any(session, str(job.deployment_id))
        if dep is not None:
            dep.build_log = lines[-BUILD_LOG_MAX:]


def _finish(
    job: ProjectJobInput, status: str, why: str | None, lines: list[str], obs: Observation | None
) -> None:
    with session_scope() as session:
        if repository.deployment_any(session, str(job.deployment_id)) is None:
            return  # the project (and its history) was deleted meanwhile
        project, env, dep = _load(session, job)
        if dep.status == "cancelled" and status != "cancelled":
            status = "cancelled" if status == "failed" else status
        dep.status = status
        dep.status_reason = why
        dep.finished_at = utcnow()
        dep.build_log = lines[-BUILD_LOG_MAX:]
        if obs is not None:
            env.state = obs.state.model_dump()
        if status == "succeeded":
            if env.active_deployment_id is not None and obs is not None:
                service.accrue(session, env, obs.ready_replicas)
            env.active_deployment_id = dep.id
            env.accounted_at = env.accounted_at or utcnow()
            env.status = "running"
            event = "project.rollback.succeeded" if dep.rollback_of else "project.deploy.succeeded"
            _event(session, event, project, dep)
        elif status == "failed":
            if env.active_deployment_id is None:
                env.status = "failed"  # nothing serves it (an earlier release would go on)
            _event(session, "project.deploy.failed", project, dep, reason=why)


def run_provision(ctx: JobContext) -> dict[str, Any] | None:
    job = ProjectJobInput.model_validate(ctx.input)
    with session_scope() as session:
        project = repository.get_project_any(session, job.project_id)
        env = repository.environment_any(session, str(job.environment_id))
        if project is None or env is None:
            raise JobFailed("Environment not found.", code="not_found")
        ref, state = service.env_ref(project, env), service.state_of(env)
    new_state = get_backend().provision_environment(ref, state)
    with session_scope() as session:
        env = repository.environment_any(session, str(job.environment_id))
        if env is not None:
            env.state = new_state.model_dump()
            if env.status in ("created", "provisioning"):
                env.status = "ready"
    return {"environment_id": job.environment_id, "status": "ready"}


def run_delete(ctx: JobContext) -> dict[str, Any] | None:
    """Remove everything the project owns (processes, routes, ports, volumes), then its rows
    (env vars, volumes, proxies, history go with the project by cascade). Idempotent."""
    job = ProjectJobInput.model_validate(ctx.input)
    backend = get_backend()
    with session_scope() as session:
        project = repository.get_project_any(session, job.project_id)
        if project is None:
            return {"status": "deleted"}
        targets = [
            (service.env_ref(project, env), service.state_of(env))
            for env in repository.environments(session, project.id)
        ]
    for ref, state in targets:
        backend.teardown(ref, state)
    with session_scope() as session:
        project = repository.get_project_any(session, job.project_id)
        if project is not None:
            session.delete(project)
    return {"status": "deleted", "environments": len(targets)}


def supervise_all() -> dict[str, int]:
    """Observe every live environment: crashed replicas restart (with backoff) and are emitted
    as ``project.crashed``."""
    crashes = 0
    with session_scope() as session:
        envs = list(repository.live_environments(session))
        for env in envs:
            project = repository.get_project_any(session, env.project_id)
            if project is None or project.status == "deleting":
                continue
            try:
                crashes += len(service.observe(session, project, env).crashes)
            except Exception:  # one environment's failure must not stop the others
                log.exception("supervising %s failed", env.id)
    return {"environments": len(envs), "crashes": crashes}


def stop_for_credit(session: Session, org_id: str) -> list[str]:
    """Stop (never delete) the organisation's running environments: billing's enforcement once
    it is out of credit past the grace period (``config.queues.BILLING_SUSPENDERS``). Returns
    the environment ids stopped; one that cannot be stopped is logged and the others go on."""
    stopped: list[str] = []
    for env in repository.live_environments(session, org_id):
        project = repository.get_project_any(session, env.project_id)
        if project is None or project.status == "deleting":
            continue
        try:
            service.stop_environment(session, project, env)
        except Exception:
            log.exception("stopping environment %s for credit failed", env.id)
            continue
        stopped.append(env.id)
    return stopped
