"""`/v1/resources` (provision, credentials, rotation, backups, restores, branches, metrics,
presigned URLs) and `/v1/deployments/{id}/bindings`.

Every slow operation is a job on the `provision` queue: the route's service call changes the
rows and creates the job on the request's session, which commits once; the job and the events
are sent after that commit (202 + the object).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from api import access
from api.deps import CurrentPrincipal, Db
from api.schemas import ERROR_RESPONSES
from api.submit import accepted_object
from common.errors import NotFound, ValidationFailed
from plans.service import enforce_quota
from resources import repository, service
from resources.models import Resource
from resources.repository import ResourceFilter
from resources.schemas import (
    BackupListQuery,
    BindingCreate,
    BranchRequest,
    PresignRequest,
    ResourceCreate,
    ResourceListQuery,
    ResourcePatch,
    RestoreRequest,
)

router = APIRouter(
    prefix="/v1",
    tags=["resources"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("resources")],
)

_STATUSES = ("provisioning", "ready", "degraded", "failed", "deleting", "deleted")
_TYPES = ("postgres", "redis", "blob", "volume")


def _accepted(db: Session, res: Resource, extra: dict[str, Any] | None = None) -> JSONResponse:
    """202 with the resource (and ``extra`` fields); its jobs are sent and its events delivered
    once the request's session commits."""
    db.flush()
    db.refresh(res)
    return accepted_object({**service.view(res), **(extra or {})}, f"/v1/resources/{res.id}")


def _csv(raw: str | None, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(v.strip() for v in (raw or "").split(",") if v.strip()))
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValidationFailed(
            f"Unknown {name} {', '.join(bad)}; one of {', '.join(allowed)}.",
            details=[{"loc": ["query", name], "msg": "unknown value", "type": "value_error"}],
        )
    return values


@router.post("/resources", status_code=202, summary="Provision a resource (202, then poll)")
def create_resource(body: ResourceCreate, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    enforce_quota(db, principal.org_id, "provision", {})
    return _accepted(db, service.create(db, principal.org_id, body))


@router.get("/resources", summary="List resources (cursor pages; credentials masked)")
def list_resources(
    principal: CurrentPrincipal, db: Db, query: Annotated[ResourceListQuery, Query()]
) -> dict[str, Any]:
    flt = ResourceFilter(
        statuses=_csv(query.status, _STATUSES, "status"),
        types=_csv(query.type, _TYPES, "type"),
        created_after=query.created_after,
        created_before=query.created_before,
        descending=query.sort == "-created_at",
    )
    rows, next_cursor = repository.list_page(
        db, principal.org_id, flt, limit=query.limit, cursor=query.cursor
    )
    return {"data": [service.view(r) for r in rows], "next_cursor": next_cursor}


@router.get("/resources/{resource_id}", summary="A resource (credentials masked)")
def get_resource(resource_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return service.view(service.get(db, principal.org_id, resource_id))


@router.patch(
    "/resources/{resource_id}",
    summary="Change limits (202: a job applies them to the server), backup schedule, retention",
    responses={202: {"description": "Changed limits: the resource, its `links.job` applies them"}},
)
def patch_resource(
    resource_id: str, body: ResourcePatch, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    res = service.get(db, principal.org_id, resource_id, lock=True)
    if body.limits is not None:
        enforce_quota(db, principal.org_id, "provision", {})
    res, limits_job = service.patch(db, res, body)
    if limits_job is not None:
        return _accepted(db, res)
    return JSONResponse(service.view(res))


@router.delete("/resources/{resource_id}", status_code=202, summary="Delete (idempotent)")
def delete_resource(
    resource_id: str, principal: CurrentPrincipal, db: Db, purge_backups: bool = False
) -> JSONResponse:
    res = repository.get(db, principal.org_id, resource_id, lock=True)
    if res is None:  # a deleted resource answers 202 again (idempotent); a missing one 404
        raise NotFound(f"Resource {resource_id!r} not found.")
    service.delete(db, res, purge_backups)
    return _accepted(db, res)


@router.get(
    "/resources/{resource_id}/credentials",
    summary="Full credentials (unmasked; needs resources:write)",
    dependencies=[access.requires("resources:write")],
)
def get_credentials(resource_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return service.credentials(service.get(db, principal.org_id, resource_id))


@router.post(
    "/resources/{resource_id}/credentials/rotate",
    status_code=202,
    summary="Rotate: a new role/user, the old one stops working, bound deployments roll",
)
def rotate_credentials(resource_id: str, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    res = service.get(db, principal.org_id, resource_id, lock=True)
    enforce_quota(db, principal.org_id, "provision", {})
    service.rotate(db, res)
    return _accepted(db, res)


@router.post("/resources/{resource_id}/presign", summary="A presigned GET/PUT URL (blob)")
def presign(
    resource_id: str, body: PresignRequest, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    res = service.get(db, principal.org_id, resource_id)
    return {"url": service.presign(res, body), "method": body.method, "expires_in": body.expires_in}


@router.get("/resources/{resource_id}/metrics", summary="Size, connections or keys, backup age")
def get_metrics(resource_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return service.metrics(db, service.get(db, principal.org_id, resource_id))


# ----------------------------------------------------------------------------- backups ---
@router.post("/resources/{resource_id}/backups", status_code=202, summary="Back up now")
def create_backup(resource_id: str, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    res = service.get(db, principal.org_id, resource_id)
    enforce_quota(db, principal.org_id, "backup", {})
    backup = service.request_backup(db, res)
    db.refresh(backup)
    return accepted_object(
        service.backup_view(backup), f"/v1/resources/{res.id}/backups/{backup.id}"
    )


@router.get("/resources/{resource_id}/backups", summary="Backups (with the PITR window)")
def list_backups(
    resource_id: str,
    principal: CurrentPrincipal,
    db: Db,
    query: Annotated[BackupListQuery, Query()],
) -> dict[str, Any]:
    res = service.get(db, principal.org_id, resource_id)
    rows, next_cursor = repository.list_backups(db, res.id, limit=query.limit, cursor=query.cursor)
    until = service.restorable_until(db, res)
    return {"data": [service.backup_view(b, until) for b in rows], "next_cursor": next_cursor}


@router.get("/resources/{resource_id}/backups/{backup_id}", summary="One backup")
def get_backup(
    resource_id: str, backup_id: str, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    res = service.get(db, principal.org_id, resource_id)
    backup = service.get_backup(db, res, backup_id)
    return service.backup_view(backup, service.restorable_until(db, res))


@router.delete(
    "/resources/{resource_id}/backups/{backup_id}", status_code=204, summary="Delete a backup"
)
def delete_backup(
    resource_id: str, backup_id: str, principal: CurrentPrincipal, db: Db
) -> Response:
    res = service.get(db, principal.org_id, resource_id)
    service.delete_backup(db, service.get_backup(db, res, backup_id))
    return Response(status_code=204)


@router.post(
    "/resources/{resource_id}/restore",
    status_code=202,
    summary="Restore a backup_id, or the state at target_time, into a NEW resource",
)
def restore(
    resource_id: str, body: RestoreRequest, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    """``target_time``: point-in-time on dedicated PostgreSQL; elsewhere the newest verified
    backup taken at or before it, answered as ``restored_to`` (its time) and ``backup_id``."""
    source = service.get(db, principal.org_id, resource_id)
    enforce_quota(db, principal.org_id, "restore", {})
    res = service.restore(db, source, body)
    origin = res.source or {}
    extra = {k: origin[k] for k in ("restored_to", "backup_id") if "restored_to" in origin}
    return _accepted(db, res, extra)


@router.post(
    "/resources/{resource_id}/branches",
    status_code=202,
    summary="A new resource holding a copy of the data (now, or at from_time)",
)
def create_branch(
    resource_id: str, body: BranchRequest, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    source = service.get(db, principal.org_id, resource_id)
    enforce_quota(db, principal.org_id, "restore", {})
    return _accepted(db, service.branch(db, source, body))


# ---------------------------------------------------------------------------- bindings ---
@router.post(
    "/deployments/{deployment_id}/bindings",
    status_code=202,
    tags=["deployments"],
    summary="Bind a resource: its variables go into the next revision (redeploy job)",
)
def create_binding(
    deployment_id: str, body: BindingCreate, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    binding, jobs = service.create_binding(db, principal.org_id, deployment_id, body)
    db.refresh(binding)
    view = service.binding_view(binding)
    view["jobs"] = [f"/v1/jobs/{job_id}" for job_id in jobs]
    return JSONResponse(view, status_code=202)


@router.get("/deployments/{deployment_id}/bindings", tags=["deployments"], summary="Bindings")
def list_bindings(deployment_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    rows = service.list_bindings(db, principal.org_id, deployment_id)
    return {"data": [service.binding_view(b) for b in rows], "next_cursor": None}


@router.delete(
    "/deployments/{deployment_id}/bindings/{binding_id}",
    status_code=204,
    tags=["deployments"],
    summary="Remove a binding (its variables leave the next revision)",
)
def delete_binding(
    deployment_id: str, binding_id: str, principal: CurrentPrincipal, db: Db
) -> Response:
    service.delete_binding(db, principal.org_id, deployment_id, binding_id)
    return Response(status_code=204)
