"""`/v1/deployments` (lifecycle as deploy jobs, revisions, logs, metrics), `/v1/models/templates`,
and the hook the OpenAI routes call to proxy a request whose `model` names a deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api import access
from api.deps import CurrentPrincipal, Db
from api.schemas import ERROR_RESPONSES, Page, parse_statuses
from api.submit import accepted_object
from api.views import follow_sse
from common.errors import ConveyorError, Unavailable
from common.redis_clients import async_client
from config import get_settings
from deployments import catalog, metrics, proxy, repository, service
from deployments.models import Deployment
from deployments.repository import DeploymentFilter
from deployments.runtime import get_backend
from deployments.schemas import (
    ALL_STATUSES,
    DeploymentCreate,
    DeploymentListQuery,
    DeploymentMetrics,
    DeploymentOut,
    DeploymentPatch,
    LogsQuery,
    ModelTemplate,
    RevisionOut,
    RollbackRequest,
)
from store.db import session_scope
from store.orgs import Principal


@contextlib.asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    """On shutdown: write this process's buffered metrics, close the replicas' connections."""
    yield
    with contextlib.suppress(Exception):
        await metrics.buffer(async_client).aclose()
    await proxy.close_sessions()


router = APIRouter(
    prefix="/v1",
    tags=["deployments"],
    responses=ERROR_RESPONSES,
    lifespan=_lifespan,
    dependencies=[access.requires_group("deployments")],
)


def _accepted(dep: Deployment) -> JSONResponse:
    return accepted_object(service.view(dep), f"/v1/deployments/{dep.id}")


def _operate(db: Db, dep: Deployment, operation: str) -> JSONResponse:
    """Create the deploy job with the state change (sent once the request commits)."""
    service.schedule(db, dep, operation)
    db.flush()
    db.refresh(dep)
    forget_routes(dep.id)
    return _accepted(dep)


def _statuses(raw: str | None) -> tuple[str, ...]:
    return parse_statuses(raw, ALL_STATUSES)


# ------------------------------------------------------------------------- catalogue ---
@router.get("/models/templates", response_model=list[ModelTemplate], summary="Deployable models")
def list_templates(principal: CurrentPrincipal) -> list[ModelTemplate]:
    return catalog.templates(get_settings())


# ------------------------------------------------------------------------- lifecycle ---
@router.post(
    "/deployments", status_code=202, response_model=DeploymentOut, summary="Create a deployment"
)
def create_deployment(body: DeploymentCreate, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    dep = service.create(db, principal.org_id, body, get_settings())
    response = _operate(db, dep, "apply")
    service.record(db, [service.Event("deployment.created", dep.org_id, service.view(dep))])
    return response


@router.get("/deployments", response_model=Page[DeploymentOut], summary="List deployments")
def list_deployments(
    principal: CurrentPrincipal, db: Db, query: Annotated[DeploymentListQuery, Query()]
) -> dict[str, Any]:
    flt = DeploymentFilter(
        statuses=_statuses(query.status),
        created_after=query.created_after,
        created_before=query.created_before,
        descending=query.sort == "-created_at",
    )
    rows, next_cursor = repository.list_page(
        db, principal.org_id, flt, limit=query.limit, cursor=query.cursor
    )
    return {"data": [service.view(d) for d in rows], "next_cursor": next_cursor}


@router.get("/deployments/{deployment_id}", response_model=DeploymentOut)
def get_deployment(deployment_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return service.view(service.get(db, principal.org_id, deployment_id))


@router.patch(
    "/deployments/{deployment_id}",
    status_code=202,
    response_model=DeploymentOut,
    summary="Change replicas, env or runtime options (a new revision, rolled out as a job)",
)
def patch_deployment(
    deployment_id: str, body: DeploymentPatch, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    dep = service.get(db, principal.org_id, deployment_id, lock=True)
    service.patch(db, dep, body)
    return _operate(db, dep, "apply" if dep.desired == "running" else "stop")


@router.post("/deployments/{deployment_id}/stop", status_code=202, response_model=DeploymentOut)
def stop_deployment(deployment_id: str, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    dep = service.get(db, principal.org_id, deployment_id, lock=True)
    service.stop(db, dep)
    return _operate(db, dep, "stop")


@router.post("/deployments/{deployment_id}/start", status_code=202, response_model=DeploymentOut)
def start_deployment(deployment_id: str, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    dep = service.get(db, principal.org_id, deployment_id, lock=True)
    service.start(db, dep)
    return _operate(db, dep, "apply")


@router.post("/deployments/{deployment_id}/rollback", status_code=202, response_model=DeploymentOut)
def rollback_deployment(
    deployment_id: str, body: RollbackRequest, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    dep = service.get(db, principal.org_id, deployment_id, lock=True)
    service.rollback(db, dep, body.revision)
    return _operate(db, dep, "apply" if dep.desired == "running" else "stop")


@router.delete("/deployments/{deployment_id}", status_code=202, response_model=DeploymentOut)
def delete_deployment(deployment_id: str, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    dep = service.get(db, principal.org_id, deployment_id, lock=True)
    if not service.delete(db, dep):
        return _accepted(dep)  # already deleting or deleted: idempotent
    return _operate(db, dep, "delete")


@router.get("/deployments/{deployment_id}/revisions", response_model=list[RevisionOut])
def list_revisions(deployment_id: str, principal: CurrentPrincipal, db: Db) -> list[dict[str, Any]]:
    dep = service.get(db, principal.org_id, deployment_id)
    return service.revision_views(db, dep)


# ---------------------------------------------------------------------- logs, metrics ---
def _load_spec(org_id: str, deployment_id: str) -> tuple[Any, Any, str]:
    with session_scope() as session:
        dep = service.get(session, org_id, deployment_id)
        return service.spec_of(dep), service.state_of(dep), dep.status


@router.get(
    "/deployments/{deployment_id}/logs",
    summary="Replica logs (secrets masked); `follow=true` streams Server-Sent Events",
)
async def deployment_logs(
    deployment_id: str,
    request: Request,
    principal: CurrentPrincipal,
    query: Annotated[LogsQuery, Query()],
) -> Response:
    spec, state, _ = await run_in_threadpool(_load_spec, principal.org_id, deployment_id)
    backend = get_backend()
    follower = await run_in_threadpool(backend.follow_logs, spec, state) if query.follow else None
    lines = await run_in_threadpool(backend.read_logs, spec, state, query.tail)
    if follower is None:
        return JSONResponse({"deployment_id": deployment_id, "lines": lines})

    return follow_sse(request, [_sse(line) for line in lines], follower.poll, _sse)


def _sse(line: str) -> bytes:
    return b"event: log\ndata: " + json.dumps({"line": line}).encode() + b"\n\n"


@router.get("/deployments/{deployment_id}/metrics", response_model=DeploymentMetrics)
async def deployment_metrics(deployment_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
    def load() -> tuple[float, int, int]:
        with session_scope() as session:
            dep = service.get(session, principal.org_id, deployment_id)
            return dep.gpu_seconds, dep.ready_replicas, service.desired_replicas(dep)

    gpu_seconds, ready, desired = await run_in_threadpool(load)
    try:
        await metrics.buffer(async_client).flush()  # this process's latest requests count too
        counters = await metrics.read(async_client(), deployment_id)
    except Exception as exc:
        raise Unavailable("The metrics store is unavailable.") from exc
    return {
        "deployment_id": deployment_id,
        **counters,
        "gpu_seconds": round(gpu_seconds, 3),
        "replicas_ready": ready,
        "replicas_desired": desired,
    }


# ------------------------------------------------------------ hook for /v1/chat/... ---
@dataclass(frozen=True)
class _Target:
    deployment_id: str
    endpoints: list[str]


# (org, name) → (cached at, target): only deployments that can serve are cached, for
# `deploy_route_cache_seconds`; a lifecycle operation through this process or an unreachable
# replica drops the entry at once.
_routes: dict[tuple[str, str], tuple[float, _Target]] = {}
_lookups: dict[tuple[str, str], asyncio.Future[_Target | ConveyorError | None]] = {}


def forget_routes(deployment_id: str) -> None:
    for key, (_, target) in list(_routes.items()):
        if target.deployment_id == deployment_id:
            _routes.pop(key, None)


def _lookup(org_id: str, name: str) -> _Target | ConveyorError | None:
    """The deployment's serving endpoints, its 503, or None when no deployment has that name.

    A deployment scaled to zero is woken here: its `scale_up` job is sent when the lookup's
    transaction commits.
    """
    with session_scope() as session:
        dep = repository.get_by_name(session, org_id, name)
        if dep is None:
            return None
        endpoints = service.serving(dep)
        if endpoints:
            return _Target(dep.id, endpoints)
        service.wake(session, dep)  # its scale_up job is sent when this commits
        error = service.unavailable(dep)
    return error


async def _target(org_id: str, name: str) -> _Target | None:
    """A deployment's serving target (cached briefly); raises 503 when it cannot serve.

    Concurrent requests that miss the cache share one lookup (one thread hop, one query).
    """
    key = (org_id, name)
    now = time.monotonic()
    cached = _routes.get(key)
    if cached is not None and now - cached[0] <= get_settings().deploy_route_cache_seconds:
        return cached[1]
    pending = _lookups.get(key)
    if pending is None or pending.get_loop() is not asyncio.get_running_loop():
        pending = asyncio.ensure_future(run_in_threadpool(_lookup, org_id, name))
        _lookups[key] = pending
        pending.add_done_callback(
            lambda done: _lookups.pop(key, None) if _lookups.get(key) is done else None
        )
    value = await asyncio.shield(pending)
    if isinstance(value, _Target):
        _routes[key] = (now, value)
        return value
    _routes.pop(key, None)
    if isinstance(value, ConveyorError):
        raise value
    return None


async def proxy_to_deployment(
    principal: Principal, model: str | None, path: str, body: bytes
) -> Response | None:
    """Answer an OpenAI request whose `model` is a deployment's name; None when it is not one.

    `path` is the OpenAI path below the replica's root, e.g. `/v1/chat/completions`; `body` is
    relayed as the client sent it. A deployment that is stopped, starting, scaled to zero or has
    no reachable replica answers 503 `unavailable` with Retry-After (never 404).
    """
    if model is None:
        return None
    target = await _target(principal.org_id, model)
    if target is None:
        return None
    deployment_id = target.deployment_id
    counted = metrics.buffer(async_client)

    def finish(latency_ms: float, tokens: int, error: bool) -> None:
        counted.add(deployment_id, latency_ms=latency_ms, tokens=tokens, error=error)

    try:
        upstream = await proxy.send(
            target.endpoints,
            path,
            body,
            timeout=get_settings().deploy_proxy_timeout_seconds,
            finish=finish,
        )
        content = None if upstream.streaming else await upstream.body()
    except proxy.ReplicaUnreachable as exc:
        forget_routes(deployment_id)
        raise Unavailable(
            f"Deployment {model!r} has no reachable replica right now; retry in 5 s.",
            details={"deployment_id": deployment_id},
            headers={"Retry-After": "5"},
        ) from exc
    headers = {"X-Conveyor-Deployment-Id": deployment_id}
    if content is None:
        return StreamingResponse(
            upstream.stream(),
            status_code=upstream.status,
            media_type=upstream.content_type,
            headers=headers,
        )
    return Response(
        content, status_code=upstream.status, media_type=upstream.content_type, headers=headers
    )


async def deployment_models(principal: Principal) -> dict[str, str]:
    """name → kind of the organisation's live deployments (listed by GET /v1/models)."""

    def load() -> dict[str, str]:
        with session_scope() as session:
            return {
                d.name: "chat"
                for d in repository.list_live_names(session, principal.org_id)
                if d.status not in ("deleting", "deleted")
            }

    return await run_in_threadpool(load)
