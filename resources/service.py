"""The rules of the resources domain, request side: create, change, delete, rotate, back up,
restore and branch resources, bind them to deployments, and show them. Functions take the
caller's session and never commit; the jobs they create (``jobs.service.create_job``) are sent
once the caller commits. The slow work those jobs do, and the beat work, is ``resources.jobs``.

Resource status: provisioning → ready | failed; ready ⇄ degraded (WAL archiving failing, or
``size_limit_exceeded``); deleting → deleted. Backups: pending → running → completed
(→ verified_at) | failed; kept ``backup_retention_days`` and at most ``backup_retention_count``
of them (both bounded by the plan).
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from common.errors import Conflict, NotFound, NotReady, ValidationFailed
from common.timeutil import isoformat_z, utcnow
from config import get_settings
from deployments import repository as dep_repo
from deployments import service as deployments
from deployments.schemas import DeploymentPatch
from jobs.service import create_job
from resources import repository
from resources.backends import get_backend, supported
from resources.backends.base import Backend, BackupResult, Handle
from resources.credentials import CredentialBox, mask_env
from resources.errors import OutsideWindow, ResourceError
from resources.models import Resource, ResourceBackup, ResourceBinding
from resources.schemas import (
    BindingCreate,
    BranchRequest,
    PresignRequest,
    ResourceCreate,
    ResourcePatch,
    RestoreRequest,
    parse_cron,
)
from resources.settings import ResourceSettings
from store import jobs as job_store

log = logging.getLogger(__name__)
PITR_BACKUP_METHOD = "pg_basebackup"
SIZE_LIMIT_EXCEEDED = "size_limit_exceeded"

#: The limits each local type/tier applies to its running server (PATCH → a ``limits`` job).
#: Shared Redis has none: an ACL user can limit commands and keys, not memory or clients.
#: ``size_bytes`` of postgres is reported (``degraded`` + alert by the usage check), a
#: volume's is enforced (read-only past it).
LIMITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("postgres", "shared"): ("connection_limit", "size_bytes"),
    ("postgres", "dedicated"): ("connection_limit", "size_bytes"),
    ("redis", "shared"): (),
    ("redis", "dedicated"): ("maxmemory", "maxmemory_policy"),
    ("blob", "shared"): (),
    ("volume", "shared"): ("size_bytes",),
}


# --------------------------------------------------------------------------- plumbing ---
@lru_cache(maxsize=1)
def resource_settings() -> ResourceSettings:
    return ResourceSettings.from_platform(get_settings())


@lru_cache(maxsize=1)
def credential_box() -> CredentialBox:
    return CredentialBox(resource_settings())


def reset_caches() -> None:
    resource_settings.cache_clear()
    credential_box.cache_clear()


def backend_of(res: Resource) -> Backend:
    return get_backend(res.type, res.tier, resource_settings())


def ident_of(res: Resource) -> str:
    return res.id.removeprefix("res_")


def handle_of(res: Resource) -> Handle:
    if res.state is None or res.secret_encrypted is None:
        raise NotReady(f"Resource {res.id} is {res.status}.")
    return Handle(dict(res.state), credential_box().decrypt(res.secret_encrypted))


def store_handle(res: Resource, handle: Handle) -> None:
    res.state = handle.state
    res.secret_encrypted = credential_box().encrypt(handle.secret)


def backup_result(b: ResourceBackup) -> BackupResult:
    return BackupResult(
        location=b.location or "",
        size_bytes=b.size_bytes or 0,
        fingerprint=b.fingerprint or {},
        method=b.method or "",
        meta=b.meta or {},
    )


def next_run(schedule: str | None, after: datetime) -> datetime | None:
    if not schedule:
        return None
    cron = parse_cron(schedule)
    delta: timedelta = cron.remaining_estimate(after)
    return after + delta


# ------------------------------------------------------------------------------- views ---
def links(res: Resource) -> dict[str, str | None]:
    base = f"/v1/resources/{res.id}"
    return {
        "self": base,
        "job": f"/v1/jobs/{res.job_id}" if res.job_id else None,
        "credentials": f"{base}/credentials",
        "backups": f"{base}/backups",
        "metrics": f"{base}/metrics",
    }


def view(res: Resource) -> dict[str, Any]:
    """The resource object of the API: connection variables always masked."""
    env: dict[str, str] = {}
    if res.secret_encrypted:
        env = mask_env(credential_box().decrypt(res.secret_encrypted).get("env", {}))
    return {
        "id": res.id,
        "type": res.type,
        "tier": res.tier,
        "name": res.name,
        "status": res.status,
        "status_reason": res.status_reason,
        "limits": res.limits or {},
        "backup_schedule": res.backup_schedule,
        "backup_retention_days": res.backup_retention_days,
        "backup_retention_count": res.backup_retention_count,
        "next_backup_at": isoformat_z(res.next_backup_at) if res.next_backup_at else None,
        "env": env,
        "source": res.source,
        "created_at": isoformat_z(res.created_at),
        "updated_at": isoformat_z(res.updated_at),
        "links": links(res),
    }


def backup_view(b: ResourceBackup, restorable_until: datetime | None = None) -> dict[str, Any]:
    meta = b.meta or {}
    pitr = b.method == PITR_BACKUP_METHOD and b.status == "completed"
    return {
        "id": b.id,
        "resource_id": b.resource_id,
        "status": b.status,
        "trigger": b.trigger,
        "method": b.method,
        "size_bytes": b.size_bytes,
        "verified_at": isoformat_z(b.verified_at) if b.verified_at else None,
        "restorable_from": meta.get("end_time") if pitr else None,
        "restorable_until": isoformat_z(restorable_until) if pitr and restorable_until else None,
        "fingerprint": b.fingerprint,
        "error": b.error,
        "created_at": isoformat_z(b.created_at),
        "completed_at": isoformat_z(b.completed_at) if b.completed_at else None,
        "expires_at": isoformat_z(b.expires_at) if b.expires_at else None,
        "links": {
            "self": f"/v1/resources/{b.resource_id}/backups/{b.id}",
            "job": f"/v1/jobs/{b.job_id}" if b.job_id else None,
        },
    }


def binding_view(b: ResourceBinding) -> dict[str, Any]:
    return {
        "id": b.id,
        "deployment_id": b.deployment_id,
        "resource_id": b.resource_id,
        "env_prefix": b.env_prefix or None,
        "env_names": list(b.env_names or []),
        "created_at": isoformat_z(b.created_at),
    }


# -------------------------------------------------------------------- request side ---
def get(session: Session, org_id: str, resource_id: str, *, lock: bool = False) -> Resource:
    res = (
        repository.get(session, org_id, resource_id, lock=lock) if len(resource_id) <= 40 else None
    )
    if res is None or res.status == "deleted":
        raise NotFound(f"Resource {resource_id!r} not found.")
    return res


def _job(session: Session, res: Resource, kind: str, payload: dict[str, Any]) -> str:
    return create_job(session, kind, res.org_id, payload, quota=False).id


def _new_resource(
    session: Session,
    org_id: str,
    *,
    type_: str,
    tier: str,
    name: str,
    limits: dict[str, Any],
    schedule: str | None,
    retention: tuple[int | None, int | None],
    source: dict[str, Any] | None = None,
) -> Resource:
    if not supported(type_, tier):
        raise ValidationFailed(
            f"There is no {tier} tier for {type_} resources.",
            details=[{"loc": ["body", "tier"], "msg": "unsupported tier", "type": "value_error"}],
        )
    _check_limits(type_, tier, limits)
    preflight = getattr(get_backend(type_, tier, resource_settings()), "preflight", None)
    if preflight is not None:
        preflight()  # 503 with what to change, before anything is created
    days, count = _retention(session, org_id, *retention)
    if repository.get_by_name(session, org_id, name) is not None:
        raise Conflict(f"A resource named {name!r} already exists.")
    now = utcnow()
    res = Resource(
        org_id=org_id,
        name=name,
        type=type_,
        tier=tier,
        status="provisioning",
        limits=limits,
        backup_schedule=schedule,
        backup_retention_days=days,
        backup_retention_count=count,
        next_backup_at=next_run(schedule, now),
        source=source,
        created_at=now,
        updated_at=now,
    )
    session.add(res)
    session.flush()
    return res


def create(session: Session, org_id: str, body: ResourceCreate) -> Resource:
    res = _new_resource(
        session,
        org_id,
        type_=body.type,
        tier=body.tier,
        name=body.name,
        limits=body.limits.model_dump(exclude_none=True),
        schedule=body.backup_schedule,
        retention=(body.backup_retention_days, body.backup_retention_count),
    )
    res.job_id = _job(session, res, "provision", {"resource_id": res.id, "operation": "create"})
    return res


def _check_limits(type_: str, tier: str, limits: dict[str, Any]) -> None:
    """422 for a limit this type/tier cannot apply (tiers outside LIMITS check their own)."""
    allowed = LIMITS.get((type_, tier))
    bad = sorted(set(limits) - set(allowed)) if allowed is not None else []
    if bad:
        can = ", ".join(allowed or ()) or "no limits"
        raise ValidationFailed(
            f"A {tier} {type_} resource cannot apply {', '.join(bad)} (it takes {can}).",
            details=[
                {"loc": ["body", "limits", name], "msg": "not applicable", "type": "value_error"}
                for name in bad
            ],
        )


def _retention(
    session: Session, org_id: str, days: int | None, count: int | None
) -> tuple[int, int]:
    """The retention asked for, bounded by the plan (422 naming the cap past it); unset:
    the platform's default days and the plan's maximum count."""
    from plans.service import plan_for_org

    plan = plan_for_org(session, org_id)
    for field_name, value, cap in (
        ("backup_retention_days", days, plan.max_backup_retention_days),
        ("backup_retention_count", count, plan.max_backup_retention_count),
    ):
        if value is not None and value > cap:
            raise ValidationFailed(
                f"{field_name} {value} is above your plan's maximum of {cap}.",
                details=[
                    {
                        "loc": ["body", field_name],
                        "msg": f"must be at most {cap}",
                        "type": "less_than_equal",
                    }
                ],
            )
    default_days = min(
        get_settings().resources_backup_retention_days, plan.max_backup_retention_days
    )
    return days or default_days, count or plan.max_backup_retention_count


def _require_idle(session: Session, res: Resource) -> None:
    """One provisioning operation at a time: a rotation and a limits change racing would each
    write back the handle the other did not see."""
    status = job_store.status_of(session, res.job_id) if res.job_id else None
    if status in ("queued", "running"):
        raise Conflict(
            f"Resource {res.id} has an operation in progress (job {res.job_id}); retry once it "
            "has finished."
        )


def patch(session: Session, res: Resource, body: ResourcePatch) -> tuple[Resource, str | None]:
    """Limits, backup schedule and retention. Changed limits are applied to the running
    server by a ``provision`` job, whose id is returned (the caller answers 202 with it); the
    rest is immediate (None).
    A shorter ``backup_retention_days`` moves the expiry of the backups already taken."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise ValidationFailed("Nothing to change.", details=[])
    if res.status in ("deleting", "deleted"):
        raise Conflict(f"Resource {res.id} is {res.status}.")
    limits_job: str | None = None
    if body.limits is not None:
        asked = body.limits.model_dump(exclude_none=True)
        _check_limits(res.type, res.tier, asked)
        previous = dict(res.limits or {})
        new = {**previous, **asked}
        check = getattr(backend_of(res), "check_limits", None)
        if new != previous and check is not None and res.state:
            check(dict(res.state), new)  # e.g. a Kubernetes volume asked to shrink → 422
        if new != previous:
            if res.status not in ("ready", "degraded"):
                raise Conflict(f"Resource {res.id} is {res.status}; change its limits once ready.")
            _require_idle(session, res)
            res.limits = new
            res.job_id = _job(
                session,
                res,
                "provision",
                {"resource_id": res.id, "operation": "limits", "limits": new, "previous": previous},
            )
            limits_job = res.job_id
    if "backup_schedule" in changes:
        res.backup_schedule = body.backup_schedule
        res.next_backup_at = next_run(body.backup_schedule, utcnow())
    if body.backup_retention_days is not None or body.backup_retention_count is not None:
        days, count = _retention(
            session,
            res.org_id,
            body.backup_retention_days or res.backup_retention_days,
            body.backup_retention_count or res.backup_retention_count,
        )
        if days != res.backup_retention_days:
            repository.set_backup_expiry(session, res.id, timedelta(days=days))
        res.backup_retention_days, res.backup_retention_count = days, count
    res.updated_at = utcnow()
    return res, limits_job


def delete(session: Session, res: Resource, purge_backups: bool) -> None:
    """Idempotent: a resource already deleting/deleted gets no second job."""
    if res.status in ("deleting", "deleted"):
        return
    if res.job_id:
        job_store.transition(
            session,
            res.job_id,
            to=job_store.JobStatus.CANCELLED,
            from_=[job_store.JobStatus.QUEUED],
        )
    res.status, res.status_reason = "deleting", None
    res.job_id = _job(
        session,
        res,
        "provision",
        {"resource_id": res.id, "operation": "delete", "purge_backups": purge_backups},
    )


def _require_ready(res: Resource) -> None:
    if res.status not in ("ready", "degraded"):
        raise NotReady(f"Resource {res.id} is {res.status}.")


def credentials(res: Resource) -> dict[str, Any]:
    """The full credentials: ``env`` plus the type's own fields."""
    _require_ready(res)
    secret = handle_of(res).secret
    out: dict[str, Any] = {"env": dict(secret.get("env", {}))}
    if res.type == "redis":
        out["key_prefix"] = secret.get("key_prefix", "")
    if res.type == "blob":
        for name in ("endpoint_url", "bucket", "access_key_id", "secret_access_key"):
            out[name] = secret.get(name)
    return out


def rotate(session: Session, res: Resource) -> None:
    _require_ready(res)
    _require_idle(session, res)
    if res.type == "volume":
        raise ValidationFailed("A volume has no credentials to rotate.", details=[])
    res.job_id = _job(session, res, "provision", {"resource_id": res.id, "operation": "rotate"})


def presign(res: Resource, body: PresignRequest) -> str:
    _require_ready(res)
    if res.type != "blob":
        raise ValidationFailed("Presigned URLs exist for blob resources only.", details=[])
    from resources.backends.blob import Blob

    backend = backend_of(res)
    assert isinstance(backend, Blob)
    return backend.presign(handle_of(res), body.key, body.method, body.expires_in)


def request_backup(session: Session, res: Resource, trigger: str = "manual") -> ResourceBackup:
    _require_ready(res)
    backup = ResourceBackup(
        org_id=res.org_id,
        resource_id=res.id,
        status="pending",
        trigger=trigger,
        created_at=utcnow(),
    )
    session.add(backup)
    session.flush()
    backup.job_id = _job(session, res, "backup", {"backup_id": backup.id, "operation": "backup"})
    return backup


def get_backup(session: Session, res: Resource, backup_id: str) -> ResourceBackup:
    backup = repository.get_backup(session, res.id, backup_id)
    if backup is None:
        raise NotFound(f"Backup {backup_id!r} not found.")
    return backup


def remove_backup_files(backup: ResourceBackup) -> None:
    """Every backend keeps a backup under ``…/<backup id>/``: remove that directory."""
    if backup.location:
        path = Path(backup.location)
        while path.name != backup.id and path.parent != path:
            path = path.parent
        if path.name == backup.id:
            shutil.rmtree(path, ignore_errors=True)


def drop_backup(session: Session, backup: ResourceBackup) -> None:
    """A backup's files, and the backend's own record of it where it keeps one (the CNPG
    ``Backup`` object on Kubernetes: the backend's ``delete_backup`` hook). Raises when the
    backend could not delete it, so the backup is not marked deleted."""
    res = repository.get_any(session, backup.resource_id)
    drop = getattr(backend_of(res), "delete_backup", None) if res is not None else None
    if drop is not None:
        drop(backup.resource_id, backup.id)
    remove_backup_files(backup)


def delete_backup(session: Session, backup: ResourceBackup) -> None:
    if backup.status in ("pending", "running"):
        raise Conflict(f"Backup {backup.id} is {backup.status}; delete it once it has finished.")
    drop_backup(session, backup)
    backup.deleted_at = utcnow()


def restorable_until(session: Session, res: Resource) -> datetime | None:
    """The end of the PITR window now (None when the resource has none)."""
    if res.type != "postgres" or res.tier != "dedicated" or res.status not in ("ready", "degraded"):
        return None
    bases = [
        backup_result(b)
        for b in repository.completed_backups(session, res.id)
        if b.method == PITR_BACKUP_METHOD
    ]
    try:
        return backend_of(res).window(handle_of(res), bases).restorable_until
    except (OutsideWindow, ResourceError):
        return None


def _check_window(session: Session, source: Resource, target: datetime) -> None:
    """PITR targets are checked here, in the request: outside the window → 422 with the
    window, and no resource or job is created."""
    if source.type != "postgres" or source.tier != "dedicated":
        raise ValidationFailed(
            "Point-in-time restore needs a dedicated postgres resource; "
            "restore a backup_id instead.",
            details=[
                {
                    "loc": ["body", "target_time"],
                    "msg": "no PITR on this tier",
                    "type": "value_error",
                }
            ],
        )
    _require_ready(source)
    bases = [
        backup_result(b)
        for b in repository.completed_backups(session, source.id)
        if b.method == PITR_BACKUP_METHOD
    ]
    try:
        window = backend_of(source).window(handle_of(source), bases)
    except OutsideWindow as exc:
        raise ValidationFailed(f"No restorable window yet: {exc.message}", details=[]) from exc
    if not window.contains(target):
        raise ValidationFailed(
            f"target_time {isoformat_z(target)} is outside the restorable window "
            f"{isoformat_z(window.restorable_from)} .. {isoformat_z(window.restorable_until)}.",
            details={
                "restorable_from": isoformat_z(window.restorable_from),
                "restorable_until": isoformat_z(window.restorable_until),
            },
        )


def _derived(
    session: Session, source: Resource, name: str, payload: dict[str, Any], origin: dict[str, Any]
) -> Resource:
    res = _new_resource(
        session,
        source.org_id,
        type_=source.type,
        tier=source.tier,
        name=name,
        limits=dict(source.limits or {}),
        schedule=source.backup_schedule,
        retention=(source.backup_retention_days, source.backup_retention_count),
        source=origin,
    )
    res.job_id = _job(
        session, res, "restore", {"resource_id": res.id, "source_id": source.id, **payload}
    )
    return res


def _has_pitr(res: Resource) -> bool:
    return res.type == "postgres" and res.tier == "dedicated"


def _newest_verified_at_or_before(
    session: Session, source: Resource, target: datetime
) -> ResourceBackup:
    """Without PITR, ``target_time`` restores the newest verified backup taken at or before it
    (422 naming the earliest one when there is none)."""
    _require_ready(source)
    verified = [b for b in repository.completed_backups(session, source.id) if b.verified_at]
    chosen = [b for b in verified if b.created_at <= target]
    if not chosen:
        earliest = isoformat_z(verified[0].created_at) if verified else None
        raise ValidationFailed(
            f"No verified backup of {source.id} was taken at or before {isoformat_z(target)}"
            + (f"; the earliest is from {earliest}." if earliest else "; it has none yet."),
            details=[
                {
                    "loc": ["body", "target_time"],
                    "msg": f"no verified backup at or before it (earliest: {earliest})",
                    "type": "value_error",
                }
            ],
        )
    return chosen[-1]


def restore(session: Session, source: Resource, body: RestoreRequest) -> Resource:
    """Always into a NEW resource, never in place."""
    name = body.name or f"{source.name[:40]}-restore-{utcnow():%Y%m%d%H%M%S}"
    if body.target_time is not None and not _has_pitr(source):
        target = body.target_time.astimezone(UTC)
        backup = _newest_verified_at_or_before(session, source, target)
        return _derived(
            session,
            source,
            name,
            {"backup_id": backup.id},
            {
                "restored_from": source.id,
                "target_time": isoformat_z(target),
                "backup_id": backup.id,
                "restored_to": isoformat_z(backup.created_at),
            },
        )
    if body.target_time is not None:
        target = body.target_time.astimezone(UTC)
        _check_window(session, source, target)
        return _derived(
            session,
            source,
            name,
            {"target_time": target.isoformat()},
            {"restored_from": source.id, "target_time": isoformat_z(target)},
        )
    assert body.backup_id is not None
    backup = get_backup(session, source, body.backup_id)
    if backup.status != "completed":
        raise NotReady(f"Backup {backup.id} is {backup.status}.")
    return _derived(
        session,
        source,
        name,
        {"backup_id": backup.id},
        {"restored_from": source.id, "backup_id": backup.id},
    )


def branch(session: Session, source: Resource, body: BranchRequest) -> Resource:
    if body.from_time is not None:
        target = body.from_time.astimezone(UTC)
        _check_window(session, source, target)
        return _derived(
            session,
            source,
            body.name,
            {"target_time": target.isoformat()},
            {"branched_from": source.id, "from_time": isoformat_z(target)},
        )
    _require_ready(source)
    return _derived(session, source, body.name, {"branch": True}, {"branched_from": source.id})


def metrics(session: Session, res: Resource) -> dict[str, Any]:
    _require_ready(res)
    data = backend_of(res).metrics(handle_of(res))
    last = repository.latest_backup(session, res.id)
    age = (utcnow() - last.completed_at).total_seconds() if last and last.completed_at else None
    return {"type": res.type, **data, "last_backup_age_seconds": age}


# --------------------------------------------------------------------------- bindings ---
def env_for_binding(res: Resource, prefix: str) -> dict[str, str]:
    env = handle_of(res).secret.get("env", {})
    return {(f"{prefix}_{k}" if prefix else k): str(v) for k, v in env.items()}


def create_binding(
    session: Session, org_id: str, deployment_id: str, body: BindingCreate
) -> tuple[ResourceBinding, list[str]]:
    """Bind: the resource's variables go into the deployment's next revision (returned: the
    deploy jobs that roll it out). A variable
    name already taken (by the deployment's own env or another binding) → 409 naming it;
    nothing is ever renamed silently — pass ``env_prefix`` to bind under other names."""
    dep = deployments.get(session, org_id, deployment_id, lock=True)
    res = get(session, org_id, body.resource_id)
    _require_ready(res)
    prefix = body.env_prefix or ""
    names = sorted(env_for_binding(res, prefix))
    taken: dict[str, str] = {k: "the deployment's env" for k in dep.env_keys or []}
    for other in repository.bindings_of_deployment(session, dep.id):
        taken.update(
            {k: f"binding {other.id} (resource {other.resource_id})" for k in other.env_names}
        )
    clashes = [n for n in names if n in taken]
    if clashes:
        raise Conflict(
            "Variable(s) already set on this deployment: "
            + ", ".join(f"{n} (by {taken[n]})" for n in clashes)
            + ". Give an env_prefix to bind under other names.",
            details={"conflicts": clashes},
        )
    binding = ResourceBinding(
        org_id=org_id,
        deployment_id=dep.id,
        resource_id=res.id,
        env_prefix=prefix,
        env_names=names,
        created_at=utcnow(),
    )
    session.add(binding)
    session.flush()
    return binding, roll_deployments(session, [dep.id], f"binding {binding.id}")


def delete_binding(session: Session, org_id: str, deployment_id: str, binding_id: str) -> None:
    dep = deployments.get(session, org_id, deployment_id, lock=True)
    binding = repository.get_binding(session, dep.id, binding_id)
    if binding is None:
        raise NotFound(f"Binding {binding_id!r} not found.")
    session.delete(binding)
    session.flush()
    roll_deployments(session, [dep.id], f"unbinding {binding_id}")


def list_bindings(session: Session, org_id: str, deployment_id: str) -> list[ResourceBinding]:
    dep = deployments.get(session, org_id, deployment_id)
    return list(repository.bindings_of_deployment(session, dep.id))


def bound_env(session: Session, deployment_id: str) -> dict[str, str]:
    """The variables of every resource bound to a deployment, read fresh (so a rollout after
    a rotation carries the new credentials, and a rollback never resurrects old ones)."""
    env: dict[str, str] = {}
    for binding in repository.bindings_of_deployment(session, deployment_id):
        res = repository.get_any(session, binding.resource_id)
        if res is not None and res.secret_encrypted and res.status in ("ready", "degraded"):
            env.update(env_for_binding(res, binding.env_prefix))
    return env


def roll_deployments(session: Session, deployment_ids: list[str], reason: str) -> list[str]:
    """A new revision (same config) for each deployment, and a deploy job for each that runs
    (returned: their ids)."""
    jobs: list[str] = []
    for dep_id in sorted(set(deployment_ids)):
        dep = dep_repo.get_any(session, dep_id, lock=True)
        if dep is None or dep.desired == "deleted":
            continue
        deployments.patch(session, dep, DeploymentPatch(env=deployments.env_of(dep)))
        if dep.desired == "running":
            jobs.append(deployments.schedule(session, dep, "apply"))
        log.info("deployment %s rolled for %s", dep_id, reason)
    return jobs
