"""The worker-side work of resources: the ``provision``, ``backup`` and ``restore`` jobs (slow
backend calls outside any transaction, their outcome recorded in short transactions of their
own) and the beat work (scheduled backups, retention, WAL-archive health, size limits, shared
Redis ACL reconcile).

A transaction that makes something true emits its event (``webhooks.events.emit``) and creates
its follow-up jobs (``jobs.service.create_job``) on its own session: both leave once it commits.
A failure is recorded (resource or backup ``failed``, with its alert) and committed before
``JobFailed`` is raised, so the runner fails the job and the alert is not lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.service import Usage, record_usage
from common.errors import JobFailed
from common.timeutil import utcnow
from jobs.context import JobContext
from jobs.service import create_job
from resources import repository
from resources.backends import get_backend
from resources.backends.base import Handle
from resources.errors import NotSupported, ResourceError
from resources.models import Resource, ResourceBackup
from resources.schemas import BackupJobInput, ProvisionJobInput, RestoreJobInput
from resources.service import (
    PITR_BACKUP_METHOD,
    SIZE_LIMIT_EXCEEDED,
    backend_of,
    backup_result,
    drop_backup,
    handle_of,
    ident_of,
    next_run,
    remove_backup_files,
    request_backup,
    resource_settings,
    roll_deployments,
    store_handle,
)
from store import jobs as job_store
from store.db import session_scope
from webhooks.events import emit

log = logging.getLogger(__name__)

#: (type, tier) whose size the usage check measures against ``size_bytes``.
USAGE_CHECKED = (("volume", "shared"), ("postgres", "shared"), ("postgres", "dedicated"))


# --------------------------------------------------------------------------------- jobs ---
def run_provision(ctx: JobContext) -> dict[str, Any]:
    """Create, delete, rotate the credentials of, or apply new limits to one resource."""
    job = ProvisionJobInput.model_validate(ctx.input)
    if job.operation == "create":
        create_resource(job.resource_id)
    elif job.operation == "delete":
        delete_resource(job.resource_id, job.purge_backups)
    elif job.operation == "limits":
        apply_limits(job.resource_id, job.limits or {}, job.previous or {})
        return {"resource_id": job.resource_id, "operation": job.operation, "limits": job.limits}
    else:
        rotate_credentials(job.resource_id)
    return {"resource_id": job.resource_id, "operation": job.operation}


def run_backup(ctx: JobContext) -> dict[str, Any]:
    """Take a backup (then queue its verification) or verify one by a scratch restore."""
    job = BackupJobInput.model_validate(ctx.input)
    if job.operation == "backup":
        take_backup(job.backup_id)
        return {"backup_id": job.backup_id}
    report = verify_backup(job.backup_id)
    if report.get("verified") is False:
        raise JobFailed(
            "The backup did not restore to the same data: " + "; ".join(report["mismatches"]),
            code="verification_failed",
        )
    return {"backup_id": job.backup_id, **report}


def run_restore(ctx: JobContext) -> dict[str, Any]:
    """Fill a new resource from a backup, a point in time or the source's current data."""
    job = RestoreJobInput.model_validate(ctx.input)
    restore_resource(job.model_dump(mode="json"))
    return {"resource_id": job.resource_id, **job.describe()}


# ---------------------------------------------------------------------------- outcomes ---
def _error_of(exc: Exception) -> tuple[str, str]:
    """(code, message) of a backend failure; unexpected ones keep their type and first line
    (server errors name objects, never passwords)."""
    if isinstance(exc, ResourceError):
        return str(exc.code), exc.message
    log.exception("resource backend failure")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return "internal_error", f"{type(exc).__name__}: {first}"[:500]


def _fail(session: Session, res: Resource, reason: str) -> None:
    """``failed`` + its alert, on ``session``."""
    res.status, res.status_reason = "failed", reason
    emit(session, "resource.failed", res.org_id, {"id": res.id, "reason": reason})


def _fail_backup(session: Session, backup: ResourceBackup, code: str, message: str) -> None:
    backup.status, backup.error = "failed", {"code": code, "message": message}
    data = {"id": backup.resource_id, "backup_id": backup.id, "reason": message}
    emit(session, "resource.backup_failed", backup.org_id, data)


# -------------------------------------------------------------------------- provision ---
def create_resource(resource_id: str) -> None:
    """Provision a fresh resource."""
    with session_scope() as session:
        res = repository.get_any(session, resource_id)
        if res is None or res.status != "provisioning":
            return
        backend, ident, limits = backend_of(res), ident_of(res), dict(res.limits or {})
    _finish_provisioning(resource_id, lambda: backend.provision(ident, limits))


def _finish_provisioning(resource_id: str, make: Callable[[], Handle]) -> None:
    """Run ``make`` (the backend call); record ready (or failed). A resource deleted while it
    was being made is torn down here, whichever of the two jobs finished first."""
    try:
        handle = make()
    except Exception as exc:  # any failure must end in `failed`, never a stuck `provisioning`
        code, message = _error_of(exc)
        with session_scope() as session:
            res = repository.get_any(session, resource_id, lock=True)
            assert res is not None
            _fail(session, res, message)
        raise JobFailed(message, code=code) from exc
    with session_scope() as session:
        res = repository.get_any(session, resource_id, lock=True)
        assert res is not None
        if res.status == "provisioning":
            store_handle(res, handle)
            res.status, res.status_reason = "ready", None
            emit(session, "resource.ready", res.org_id, {"id": res.id})
            return
        backend = backend_of(res)
    backend.deprovision(handle)  # an orphan: its resource was deleted meanwhile


def delete_resource(resource_id: str, purge_backups: bool) -> None:
    with session_scope() as session:
        res = repository.get_any(session, resource_id)
        if res is None or res.status == "deleted":
            return
        backend = backend_of(res)
        handle = handle_of(res) if res.state and res.secret_encrypted else None
        backups = [b.id for b in repository.backups_of(session, res.id)]
    if handle is not None:
        backend.deprovision(handle)
        if purge_backups and hasattr(backend, "purge_backups"):
            backend.purge_backups(handle)
    with session_scope() as session:
        res = repository.get_any(session, resource_id, lock=True)
        assert res is not None
        bound = [b.deployment_id for b in repository.bindings_of_resource(session, res.id)]
        for binding in repository.bindings_of_resource(session, res.id):
            session.delete(binding)
        session.flush()
        roll_deployments(session, bound, f"deletion of {res.id}")
        if purge_backups:
            for backup_id in backups:
                backup = repository.get_backup_any(session, backup_id)
                if backup is not None:
                    remove_backup_files(backup)
                    backup.deleted_at = utcnow()
        res.status, res.deleted_at = "deleted", utcnow()
        res.secret_encrypted = None
        emit(session, "resource.deleted", res.org_id, {"id": res.id})


def rotate_credentials(resource_id: str) -> None:
    with session_scope() as session:
        res = repository.get_any(session, resource_id)
        if res is None or res.status not in ("ready", "degraded"):
            return
        backend, handle = backend_of(res), handle_of(res)
    new = backend.rotate(handle)
    with session_scope() as session:
        res = repository.get_any(session, resource_id, lock=True)
        assert res is not None
        store_handle(res, new)
        bound = [b.deployment_id for b in repository.bindings_of_resource(session, res.id)]
        roll_deployments(session, bound, f"rotation of {res.id}")


def apply_limits(resource_id: str, limits: dict[str, Any], previous: dict[str, Any]) -> None:
    """Apply the resource's limits to its running server (the newest ones asked for: a later
    PATCH supersedes ``limits``), record what the backend changed in its state, then run the
    usage check at once (a volume goes read-only or writable again now). When they cannot be
    applied, the resource's limits go back to ``previous`` and the job fails."""
    with session_scope() as session:
        res = repository.get_any(session, resource_id)
        if res is None or res.status not in ("ready", "degraded"):
            return
        backend, handle, desired = backend_of(res), handle_of(res), dict(res.limits or {})
        what = f"a {res.tier} {res.type} resource"
    apply = getattr(backend, "apply_limits", None)
    try:
        if apply is None:
            raise NotSupported(f"{what} cannot change limits")
        changed: dict[str, Any] = apply(handle, desired)
    except Exception as exc:  # the limits row must not claim what the server does not do
        code, message = _error_of(exc)
        with session_scope() as session:
            res = repository.get_any(session, resource_id, lock=True)
            if res is not None and res.limits == limits:
                res.limits = previous
        raise JobFailed(f"The limits were not applied: {message}", code=code) from exc
    with session_scope() as session:
        res = repository.get_any(session, resource_id, lock=True)
        assert res is not None
        res.state = {**(res.state or {}), **changed}
    check_usage_of(resource_id)


# ---------------------------------------------------------------------------- backups ---
def take_backup(backup_id: str) -> None:
    """Take the backup, then create its verification job."""
    with session_scope() as session:
        backup = repository.get_backup_any(session, backup_id)
        if backup is None or backup.status not in ("pending", "running"):
            return
        res = repository.get_any(session, backup.resource_id)
        assert res is not None
        backup.status = "running"
        backend, handle = backend_of(res), handle_of(res)
        retention = res.backup_retention_days
    try:
        result = backend.backup(handle, backup_id)
    except Exception as exc:  # any failure must end in `failed`, never a stuck `running`
        code, message = _error_of(exc)
        with session_scope() as session:
            backup = repository.get_backup_any(session, backup_id)
            assert backup is not None
            _fail_backup(session, backup, code, message)
        raise JobFailed(message, code=code) from exc
    with session_scope() as session:
        backup = repository.get_backup_any(session, backup_id)
        assert backup is not None
        now = utcnow()
        backup.status, backup.completed_at = "completed", now
        backup.expires_at = now + timedelta(days=retention)
        backup.location, backup.size_bytes = result.location, result.size_bytes
        backup.fingerprint, backup.method, backup.meta = (
            result.fingerprint,
            result.method,
            result.meta,
        )
        verify = {"backup_id": backup_id, "operation": "verify"}
        create_job(session, "backup", backup.org_id, verify, quota=False)


def verify_backup(backup_id: str) -> dict[str, Any]:
    """Restore the backup into a scratch copy, compare per table, drop the copy; a mismatch
    marks the backup failed (with its alert). Returns the report."""
    with session_scope() as session:
        backup = repository.get_backup_any(session, backup_id)
        if backup is None or backup.status != "completed" or backup.deleted_at is not None:
            return {"skipped": True}
        res = repository.get_any(session, backup.resource_id)
        assert res is not None
        backend, result = backend_of(res), backup_result(backup)
        handle = (
            handle_of(res) if res.state and res.secret_encrypted else Handle(res.state or {}, {})
        )
    try:
        mismatches = backend.verify(handle, result).mismatches
    except Exception as exc:  # a backup that cannot be restored failed verification
        mismatches = [f"restore failed: {_error_of(exc)[1]}"]
    with session_scope() as session:
        backup = repository.get_backup_any(session, backup_id)
        assert backup is not None
        if not mismatches:
            backup.verified_at = utcnow()
            data = {"id": backup.resource_id, "backup_id": backup.id}
            emit(session, "resource.backup_completed", backup.org_id, data)
            return {"verified": True, "tables": len(result.fingerprint)}
        _fail_backup(session, backup, "verification_failed", "; ".join(mismatches)[:2000])
    return {"verified": False, "mismatches": mismatches}


def restore_resource(job: dict[str, Any]) -> None:
    """Fill the new resource ``resource_id`` from ``source_id``."""
    with session_scope() as session:
        res = repository.get_any(session, job["resource_id"])
        if res is None or res.status != "provisioning":
            return
        source = repository.get_any(session, job["source_id"])
        if source is None or not source.state or not source.secret_encrypted:
            _fail(session, res, "the source resource no longer exists")
            make = None
        else:
            make = _restore_call(session, res, source, job)
    if make is None:  # the failure is recorded and committed: now fail the job
        raise JobFailed("The source resource no longer exists.", code="not_found")
    _finish_provisioning(job["resource_id"], make)


def _restore_call(
    session: Session, res: Resource, source: Resource, job: dict[str, Any]
) -> Callable[[], Handle]:
    """The backend call that makes ``res`` from ``source``: a backup, a point in time, or a
    branch of its current data."""
    backend, ident, source_handle = backend_of(res), ident_of(res), handle_of(source)
    if job.get("backup_id"):
        backup = repository.get_backup_any(session, job["backup_id"])
        if backup is not None:
            result = backup_result(backup)
            return lambda: backend.restore(result, source_handle, ident)
    if job.get("target_time"):
        target = datetime.fromisoformat(job["target_time"])
        bases = [
            backup_result(b)
            for b in repository.completed_backups(session, source.id)
            if b.method == PITR_BACKUP_METHOD
        ]
        return lambda: backend.pitr(source_handle, bases, target, ident)
    return lambda: backend.branch(source_handle, ident)


# ------------------------------------------------------------------- periodic (beat) ---
def scheduled_backups(now: datetime | None = None) -> int:
    """Create the backups whose ``backup_schedule`` is due, fail what a dead job abandoned and
    drop backups past retention; returns how many backups were queued."""
    now = now or utcnow()
    with session_scope() as session:
        queued = schedule_due_backups(session, now)
        fail_abandoned(session)
        expired = expire_backups(session, now)
    if expired:
        log.info("%d backups past their retention deleted", expired)
    return queued


def schedule_due_backups(session: Session, now: datetime) -> int:
    due = list(repository.due_for_backup(session, now))
    for res in due:
        res.next_backup_at = next_run(res.backup_schedule, now)
        request_backup(session, res, trigger="scheduled")
    return len(due)


def fail_abandoned(session: Session) -> None:
    """Resources still ``provisioning`` and backups still ``pending``/``running`` whose job
    ended without finishing them (reaped after a worker died, cancelled) become ``failed``."""
    for res in repository.in_progress(session):
        status = job_store.status_of(session, res.job_id) if res.job_id else None
        if status in ("failed", "cancelled", None):
            _fail(session, res, f"the provisioning job ended {status or 'missing'}")
    for backup in repository.backups_in_progress(session):
        status = job_store.status_of(session, backup.job_id) if backup.job_id else None
        if status in ("failed", "cancelled", None):
            backup.status = "failed"
            backup.error = {
                "code": "job_" + (status or "missing"),
                "message": "the backup job ended",
            }
            data = {"id": backup.resource_id, "backup_id": backup.id}
            emit(session, "resource.backup_failed", backup.org_id, data)


def expire_backups(session: Session, now: datetime) -> int:
    """Delete backups past their retention — older than ``backup_retention_days`` (their
    ``expires_at``) or beyond the newest ``backup_retention_count`` completed ones — then the
    WAL no kept base backup needs."""
    expired = list(repository.expired_backups(session, now))
    for resource_id, keep in repository.over_backup_count(session):
        expired += list(repository.completed_backups(session, resource_id))[:-keep]
    dropped = 0
    for backup in expired:
        try:
            drop_backup(session, backup)
        except Exception:  # kept (not marked deleted): the next run tries again
            log.exception("deleting expired backup %s failed", backup.id)
            continue
        backup.deleted_at = now
        dropped += 1
    session.flush()
    for resource_id in sorted({b.resource_id for b in expired}):
        res = repository.get_any(session, resource_id)
        if res is not None and res.state and res.secret_encrypted:
            kept = [
                backup_result(b)
                for b in repository.completed_backups(session, res.id)
                if b.method == PITR_BACKUP_METHOD
            ]
            backend_of(res).prune_archive(handle_of(res), kept)
    return dropped


def check_archiving() -> int:
    """Every dedicated postgres: commit a heartbeat (keeps quiet databases restorable) and
    read pg_stat_archiver; failing archiving → degraded + alert, recovered → ready. Returns
    how many resources changed status."""
    with session_scope() as session:
        targets = [
            (r.id, handle_of(r)) for r in repository.live_of(session, "postgres", "dedicated")
        ]
    backend = get_backend("postgres", "dedicated", resource_settings())
    changed = 0
    for resource_id, handle in targets:
        try:
            backend.heartbeat(handle)
            health = backend.health(handle)
        except Exception as exc:
            health = {"status": "failing", "last_failed_wal": None, "error": str(exc)[:300]}
        with session_scope() as session:
            res = repository.get_any(session, resource_id, lock=True)
            if res is None:
                continue
            if health["status"] == "failing" and res.status == "ready":
                reason = f"WAL archiving is failing: {health}"
                res.status, res.status_reason = "degraded", reason
                emit(session, "resource.degraded", res.org_id, {"id": res.id, "reason": reason})
                changed += 1
            elif (
                health["status"] == "ok"
                and res.status == "degraded"
                and (res.status_reason or "").startswith("WAL archiving")
            ):
                res.status, res.status_reason = "ready", None
                emit(session, "resource.ready", res.org_id, {"id": res.id})
                changed += 1
    return changed


def check_usage() -> int:
    """Every volume and size-limited postgres: usage against the size limit. Past it →
    ``degraded`` (``size_limit_exceeded``) + an alert, and a volume becomes read-only; back
    under it (data removed, limit raised) → ``ready`` and writable again. Returns how many
    resources changed status."""
    with session_scope() as session:
        ids = [r.id for t in USAGE_CHECKED for r in repository.live_of(session, *t)]
    changed = 0
    for resource_id in ids:
        try:
            changed += check_usage_of(resource_id)
        except Exception:  # one broken resource must not stop the others' checks
            log.exception("usage check of %s failed", resource_id)
    return changed


def check_usage_of(resource_id: str) -> int:
    """One resource's usage check, under its row lock (so a limits job and the beat check
    do not interleave their read-only switches). Returns 1 when its status changed."""
    with session_scope() as session:
        res = repository.get_any(session, resource_id, lock=True)
        if res is None or res.status not in ("ready", "degraded") or not res.state:
            return 0
        backend, handle = backend_of(res), handle_of(res)
        limit = (res.limits or {}).get("size_bytes") or res.state.get("limit_bytes")
        usage = getattr(backend, "usage_bytes", None)
        if limit is None or usage is None:
            return 0
        measured = usage(handle)
        if measured is None:  # unknown (e.g. a Kubernetes volume no pod mounts): no verdict
            return 0
        used = int(measured)
        over = used > int(limit)
        if hasattr(backend, "set_read_only"):
            backend.set_read_only(handle, over)
        if over and res.status == "ready":
            res.status, res.status_reason = "degraded", SIZE_LIMIT_EXCEEDED
            data = {
                "id": res.id,
                "reason": SIZE_LIMIT_EXCEEDED,
                "used_bytes": used,
                "limit_bytes": limit,
            }
            emit(session, "resource.degraded", res.org_id, data)
            return 1
        if not over and res.status == "degraded" and res.status_reason == SIZE_LIMIT_EXCEEDED:
            res.status, res.status_reason = "ready", None
            emit(session, "resource.ready", res.org_id, {"id": res.id})
            return 1
    return 0


def reconcile_access() -> int:
    """Re-apply every shared Redis resource's ACL user from the store (a Redis restart
    forgets users made with ACL SETUSER). Returns how many had to be rewritten."""
    with session_scope() as session:
        targets = [(r.id, handle_of(r)) for r in repository.live_of(session, "redis", "shared")]
    reconcile = getattr(get_backend("redis", "shared", resource_settings()), "reconcile", None)
    if reconcile is None:  # another backend (Kubernetes) keeps its own users
        return 0
    fixed = 0
    for resource_id, handle in targets:
        try:
            if reconcile(handle):
                log.warning("ACL user of %s was missing or had drifted: re-applied", resource_id)
                fixed += 1
        except Exception:
            log.exception("ACL reconcile of %s failed", resource_id)
    return fixed


# --- billing: storage GB-hours -------------------------------------------------------------------

#: Hours metered back from now on each run (a beat that was down catches up this far).
STORAGE_METER_HOURS = 3


def meter_storage(now: datetime | None = None) -> int:
    """``storage_gb_hours`` (by resource type) of every ready resource, for each whole hour of the
    last :data:`STORAGE_METER_HOURS` it existed in: its size limit in GB, rounded up (1 GB
    without one). Keyed by resource and hour, so reruns and overlapping runs write nothing twice.
    Called by billing's beat (``config.queues.BILLING_METERS``)."""
    top = (now or utcnow()).replace(minute=0, second=0, microsecond=0)
    with session_scope() as session:
        live = session.scalars(
            select(Resource).where(Resource.status.in_(("ready", "degraded")))
        ).all()
        usages: list[Usage] = []
        for res in live:
            size = int((res.limits or {}).get("size_bytes") or 0)
            gb = max(1, -(-size // 1_000_000_000))
            for back in range(1, STORAGE_METER_HOURS + 1):
                start = top - timedelta(hours=back)
                if res.created_at > start:  # only whole hours it existed in
                    continue
                usages.append(
                    Usage(
                        org_id=res.org_id,
                        meter="storage_gb_hours",
                        quantity=gb,
                        dimension=res.type,
                        subject_type="resource",
                        subject_id=res.id,
                        occurred_at=start,
                        idempotency_key=f"resource:{res.id}:storage:{start:%Y-%m-%dT%H}",
                    )
                )
        return record_usage(session, usages)
