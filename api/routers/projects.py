"""`/v1/projects` (projects, environments, deployments, rollbacks, status, logs, env vars,
services, volumes, config) and `/v1/services/{id}/...` (TCP proxies); plus ``AppRouter``, the
ASGI middleware that sends app traffic (``Host`` = an environment's domain, or
``/apps/{slug}/{environment}/``) to the environment's replicas.

Deploy, rollback, provision and delete are jobs on the `deploy` queue: the service call
changes the rows and creates the job on the request's session, which commits once (202).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from api import access
from api.deps import CurrentPrincipal, Db
from api.schemas import ERROR_RESPONSES
from api.submit import accepted_object
from api.views import follow_sse
from common.errors import NotFound
from config import get_settings
from projects import repository, service
from projects.backends.base import LogLine, LogQuery
from projects.router import NoReplica, RouteTable, default_table, forward
from projects.runtime import get_backend
from projects.schemas import (
    AllowEntry,
    ConfigUpsert,
    ConfigValue,
    DeploymentListQuery,
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
from store.db import session_scope

router = APIRouter(
    prefix="/v1",
    tags=["projects"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("projects")],
)


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = None


# ---------------------------------------------------------------------------- projects ---
@router.post("/projects", status_code=201, summary="Create a project (and its production env)")
def create_project(body: ProjectCreate, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    project = service.create_project(db, principal.org_id, body)
    return service.project_view(db, project)


@router.get("/projects", summary="List projects (cursor pages)")
def list_projects(
    principal: CurrentPrincipal, db: Db, query: Annotated[PageQuery, Query()]
) -> dict[str, Any]:
    rows, cursor = repository.list_projects(
        db, principal.org_id, limit=query.limit, cursor=query.cursor
    )
    return {"data": [service.project_view(db, p) for p in rows], "next_cursor": cursor}


@router.get("/projects/{project_id}", summary="Get a project")
def get_project(project_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return service.project_view(db, service.get_project(db, principal.org_id, project_id))


@router.patch("/projects/{project_id}", summary="Change a project (applied on the next deploy)")
def patch_project(
    project_id: str, body: ProjectPatch, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id, lock=True)
    return service.project_view(db, service.patch_project(db, project, body))


@router.delete(
    "/projects/{project_id}",
    status_code=202,
    summary="Delete a project and everything it owns (a job; idempotent)",
)
def delete_project(project_id: str, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    project = repository.get_project(db, principal.org_id, project_id, lock=True)
    if project is None:
        raise NotFound(f"Project {project_id!r} not found.")
    service.delete_project(db, project)
    view = {"id": project.id, "status": project.status, "job_id": project.job_id}
    return accepted_object(view, f"/v1/jobs/{project.job_id}")


# ------------------------------------------------------------------------ environments ---
@router.post(
    "/projects/{project_id}/environments", status_code=201, summary="Create an environment"
)
def create_environment(
    project_id: str, body: EnvironmentCreate, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    return service.environment_view(service.create_environment(db, project, body))


@router.get("/projects/{project_id}/environments", summary="List a project's environments")
def list_environments(project_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    envs = repository.environments(db, project.id)
    return {"data": [service.environment_view(e) for e in envs], "next_cursor": None}


@router.get("/projects/{project_id}/environments/{env_id}", summary="Get an environment")
def get_environment(
    project_id: str, env_id: str, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    return service.environment_view(service.get_environment(db, project, env_id=env_id))


@router.patch("/projects/{project_id}/environments/{env_id}", summary="Change an environment")
def patch_environment(
    project_id: str, env_id: str, body: EnvironmentPatch, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    env = service.get_environment(db, project, env_id=env_id, lock=True)
    return service.environment_view(service.patch_environment(db, env, body))


@router.post(
    "/projects/{project_id}/environments/{env_id}/provision",
    status_code=202,
    summary="Provision an environment (a job: namespace, secrets, route)",
)
def provision_environment(
    project_id: str, env_id: str, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    project = service.get_project(db, principal.org_id, project_id)
    env = service.get_environment(db, project, env_id=env_id, lock=True)
    job_id = service.provision(db, project, env)
    return accepted_object(
        {**service.environment_view(env), "job_id": job_id}, f"/v1/jobs/{job_id}"
    )


# ------------------------------------------------------------------------- deployments ---
@router.post(
    "/projects/{project_id}/deploy", status_code=202, summary="Deploy an environment (a job)"
)
def deploy(
    project_id: str, body: DeployRequest, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    project = service.get_project(db, principal.org_id, project_id)
    dep = service.deploy(db, project, body)
    view = service.accepted_view(project, dep)
    return accepted_object(view, f"/v1/projects/{project.id}/deployments/{dep.id}")


@router.post(
    "/projects/{project_id}/rollback",
    status_code=202,
    summary="Roll back to a deployment: its artifact and env snapshot (a job)",
)
def rollback(
    project_id: str, body: RollbackRequest, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    project = service.get_project(db, principal.org_id, project_id)
    dep = service.rollback(db, project, body)
    view = service.accepted_view(project, dep)
    return accepted_object(view, f"/v1/projects/{project.id}/deployments/{dep.id}")


@router.get("/projects/{project_id}/deployments", summary="Deployment history (cursor pages)")
def list_deployments(
    project_id: str,
    principal: CurrentPrincipal,
    db: Db,
    query: Annotated[DeploymentListQuery, Query()],
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    env_id = None
    if query.environment is not None:
        env_id = service.get_environment(db, project, query.environment).id
    rows, cursor = repository.list_deployments(
        db,
        project.id,
        environment_id=env_id,
        status=query.status,
        limit=query.limit,
        cursor=query.cursor,
    )
    for row in rows:
        service.sync_with_job(db, row)
    return {"data": [service.deployment_view(d) for d in rows], "next_cursor": cursor}


@router.get("/projects/{project_id}/deployments/{deployment_id}", summary="Get a deployment")
def get_deployment(
    project_id: str, deployment_id: str, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    return service.deployment_view(service.get_deployment(db, project, deployment_id))


@router.post(
    "/projects/{project_id}/deployments/{deployment_id}/cancel", summary="Cancel a deployment"
)
def cancel_deployment(
    project_id: str, deployment_id: str, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    return service.deployment_view(service.cancel_deployment(db, project, deployment_id))


class EnvQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment: str = "production"


@router.get("/projects/{project_id}/status", summary="Observed status of an environment")
def project_status(
    project_id: str, principal: CurrentPrincipal, db: Db, query: Annotated[EnvQuery, Query()]
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    env = service.get_environment(db, project, query.environment)
    return service.status_view(project, env, service.observe(db, project, env))


# -------------------------------------------------------------------------------- logs ---
class LogsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment: str = "production"
    tail: int = Field(default=200, ge=0, le=1000)
    stream: bool = False
    deployment_id: str | None = None
    service: str | None = None


def _log_context(
    org_id: str, project_id: str, query: LogsQuery
) -> tuple[Any, Any, list[str], list[dict[str, Any]]]:
    with session_scope() as db:
        project = service.get_project(db, org_id, project_id)
        env = service.get_environment(db, project, query.environment)
        secrets = service.secret_values(db, env)
        build: list[dict[str, Any]] = []
        deps = repository.recent_deployments(db, env.id, limit=5)
        if query.deployment_id is not None:
            deps = [service.get_deployment(db, project, query.deployment_id)]
        if query.service in (None, "build"):
            for dep in reversed(list(deps)):
                ts = dep.started_at.timestamp() if dep.started_at else dep.created_at.timestamp()
                for n, line in enumerate(dep.build_log or []):
                    build.append(
                        {
                            "ts": ts + n * 1e-6,
                            "level": "info",
                            "service": "build",
                            "stream": "build",
                            "deployment_id": dep.id,
                            "msg": str(line),
                        }
                    )
        return service.env_ref(project, env), service.state_of(env), secrets, build


def _masked(line: LogLine | dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    data = line.model_dump() if isinstance(line, LogLine) else dict(line)
    data["msg"] = service.mask(str(data["msg"]), secrets)
    return data


@router.get(
    "/projects/{project_id}/logs",
    summary="Build and runtime logs (secrets masked): NDJSON, or SSE with `stream=true`",
)
async def project_logs(
    project_id: str,
    request: Request,
    principal: CurrentPrincipal,
    query: Annotated[LogsQuery, Query()],
) -> Response:
    ref, state, secrets, build = await run_in_threadpool(
        _log_context, principal.org_id, project_id, query
    )
    backend = get_backend()
    log_query = LogQuery(tail=query.tail, deployment_id=query.deployment_id, service=query.service)
    runtime: list[LogLine] = []
    if query.service != "build":
        runtime = await run_in_threadpool(backend.logs, ref, state, log_query)
    lines = sorted([*build, *(ln.model_dump() for ln in runtime)], key=lambda d: d["ts"])
    lines = lines[-query.tail :] if query.tail else []
    masked = [_masked(ln, secrets) for ln in lines]
    if not query.stream:
        body = "".join(json.dumps(ln) + "\n" for ln in masked)
        return Response(body, media_type="application/x-ndjson")
    follower: Iterator[list[LogLine]] = await run_in_threadpool(
        backend.follow_logs, ref, state, log_query
    )

    def event(item: Any) -> bytes:
        return b"data: " + json.dumps(_masked(item, secrets)).encode() + b"\n\n"

    first = [b"data: " + json.dumps(line).encode() + b"\n\n" for line in masked]
    return follow_sse(request, first, lambda: next(follower), event)


# ---------------------------------------------------------------------------- env vars ---
@router.get("/projects/{project_id}/env-vars", summary="Env vars of an environment (secrets ***)")
def list_env_vars(
    project_id: str, principal: CurrentPrincipal, db: Db, query: Annotated[EnvQuery, Query()]
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    env = service.get_environment(db, project, query.environment)
    return {"data": service.env_vars_view(db, env), "environment": env.name}


@router.post(
    "/projects/{project_id}/env-vars",
    summary="Upsert env vars (nothing restarts: the next deploy applies them)",
)
def upsert_env_vars(
    project_id: str, body: EnvVarsUpsert, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    env = service.get_environment(db, project, body.environment)
    service.upsert_env_vars(db, env, body)
    return {"data": service.env_vars_view(db, env), "environment": env.name}


@router.delete(
    "/projects/{project_id}/env-vars/{key}", status_code=204, summary="Remove an env var"
)
def delete_env_var(
    project_id: str,
    key: str,
    principal: CurrentPrincipal,
    db: Db,
    query: Annotated[EnvQuery, Query()],
) -> Response:
    project = service.get_project(db, principal.org_id, project_id)
    env = service.get_environment(db, project, query.environment)
    service.delete_env_var(db, env, key)
    return Response(status_code=204)


# ---------------------------------------------------------------------------- services ---
@router.get("/projects/{project_id}/services", summary="A project's services")
def list_services(project_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    return {"data": service.services_view(project), "next_cursor": None}


@router.post("/projects/{project_id}/services", status_code=201, summary="Declare a service")
def create_service(
    project_id: str, body: ServiceCreate, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id, lock=True)
    return service.create_service(db, project, body)


@router.get("/projects/{project_id}/services/{name}", summary="Get a service")
def get_service(project_id: str, name: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return service.get_service(service.get_project(db, principal.org_id, project_id), name)


@router.patch("/projects/{project_id}/services/{name}", summary="Change a service")
def patch_service(
    project_id: str, name: str, body: ServicePatch, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id, lock=True)
    return service.patch_service(db, project, name, body)


@router.patch(
    "/projects/{project_id}/services/{name}/environments/{env_id}",
    summary="Per-environment overrides of a service (replicas, port, resources)",
)
def patch_service_env(
    project_id: str,
    name: str,
    env_id: str,
    body: ServiceEnvPatch,
    principal: CurrentPrincipal,
    db: Db,
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    env = service.get_environment(db, project, env_id=env_id, lock=True)
    return service.patch_service_env(db, project, name, env, body)


@router.get("/services/{service_id}/latest-image", summary="The artifact a service runs now")
def latest_image(service_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    project, name = service.find_service(db, principal.org_id, service_id)
    env = service.get_environment(db, project, "production")
    dep = (
        repository.deployment(db, project.id, env.active_deployment_id)
        if env.active_deployment_id
        else None
    )
    artifact = (dep.artifact if dep else None) or {}
    return {
        "service_id": service_id,
        "service": name,
        "deployment_id": dep.id if dep else None,
        "git_commit": artifact.get("git_commit"),
        "image": artifact.get("image"),
        "kind": artifact.get("kind"),
    }


# --------------------------------------------------------------------------- tcp proxy ---
class PermanentQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    permanent: bool = False


@router.get("/services/{service_id}/tcp-proxy", summary="A service's TCP proxy")
def get_tcp_proxy(service_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    project, name = service.find_service(db, principal.org_id, service_id)
    return service.tcp_proxy_view(service.service_proxy(db, project, name))


@router.post("/services/{service_id}/tcp-proxy", status_code=201, summary="Open a TCP proxy")
def create_tcp_proxy(
    service_id: str, body: TcpProxyCreate, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project, name = service.find_service(db, principal.org_id, service_id)
    return service.tcp_proxy_view(service.create_tcp_proxy(db, project, name, body))


@router.delete(
    "/services/{service_id}/tcp-proxy",
    status_code=204,
    summary="Disable a service's TCP proxy (it keeps its port; `?permanent=true` frees it)",
)
def delete_tcp_proxy(
    service_id: str,
    principal: CurrentPrincipal,
    db: Db,
    query: Annotated[PermanentQuery, Query()],
) -> Response:
    project, name = service.find_service(db, principal.org_id, service_id)
    service.delete_tcp_proxy(db, project, name, permanent=query.permanent)
    return Response(status_code=204)


@router.get("/services/{service_id}/tcp-proxy/allowlist", summary="The proxy's allow-list")
def get_allowlist(service_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    project, name = service.find_service(db, principal.org_id, service_id)
    return {"data": service.service_proxy(db, project, name).allowlist, "next_cursor": None}


@router.post(
    "/services/{service_id}/tcp-proxy/allowlist",
    status_code=201,
    summary="Allow a CIDR (takes effect for the next connection)",
)
def add_allow(
    service_id: str, body: AllowEntry, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project, name = service.find_service(db, principal.org_id, service_id)
    proxy = service.set_allowlist(db, project, name, [body])
    return {"data": proxy.allowlist, "next_cursor": None}


class CidrQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cidr: str


@router.delete(
    "/services/{service_id}/tcp-proxy/allowlist", status_code=204, summary="Remove a CIDR"
)
def remove_allow(
    service_id: str, principal: CurrentPrincipal, db: Db, query: Annotated[CidrQuery, Query()]
) -> Response:
    project, name = service.find_service(db, principal.org_id, service_id)
    service.set_allowlist(db, project, name, [], remove=query.cidr)
    return Response(status_code=204)


# ----------------------------------------------------------------------------- volumes ---
@router.get("/projects/{project_id}/volumes", summary="A project's volumes")
def list_volumes(project_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    vols = repository.volumes(db, project.id)
    return {"data": [service.volume_view(v) for v in vols], "next_cursor": None}


@router.post(
    "/projects/{project_id}/volumes",
    status_code=201,
    summary="Create a volume (mounted from the next deploy; survives deploys)",
)
def create_volume(
    project_id: str, body: VolumeCreate, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    return service.volume_view(service.create_volume(db, project, body))


@router.delete("/projects/{project_id}/volumes/{volume_id}", status_code=204)
def delete_volume(project_id: str, volume_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    project = service.get_project(db, principal.org_id, project_id)
    service.delete_volume(db, project, volume_id)
    return Response(status_code=204)


# ------------------------------------------------------------------------------ config ---
@router.get("/projects/{project_id}/config", summary="Project config (not injected as env)")
def get_config(project_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    entries = [{"key": k, "value": v} for k, v in sorted(project.config.items())]
    return {"data": entries, "next_cursor": None}


@router.post("/projects/{project_id}/config", summary="Set config entries")
def post_config(
    project_id: str, body: ConfigUpsert, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id, lock=True)
    config = service.set_config(db, project, {e.key: e.value for e in body.entries})
    return {"data": [{"key": k, "value": v} for k, v in sorted(config.items())]}


@router.get("/projects/{project_id}/config/{key}", summary="Get a config entry")
def get_config_key(
    project_id: str, key: str, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    if key not in project.config:
        raise NotFound(f"Config key {key!r} not set.")
    return {"key": key, "value": project.config[key]}


@router.put("/projects/{project_id}/config/{key}", summary="Set a config entry")
def put_config_key(
    project_id: str, key: str, body: ConfigValue, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id, lock=True)
    service.set_config(db, project, {key: body.value})
    return {"key": key, "value": body.value}


@router.delete("/projects/{project_id}/config/{key}", status_code=204)
def delete_config_key(project_id: str, key: str, principal: CurrentPrincipal, db: Db) -> Response:
    project = service.get_project(db, principal.org_id, project_id, lock=True)
    service.delete_config(db, project, key)
    return Response(status_code=204)


# -------------------------------------------------------------------------- app router ---
class AppRouter:
    """ASGI: app traffic (``/apps/{slug}/{environment}/…`` or a ``Host`` that is an
    environment's domain) goes to its replicas; everything else goes on to the API."""

    def __init__(self, app: ASGIApp, table: RouteTable | None = None) -> None:
        self.app = app
        self._table = table

    @property
    def table(self) -> RouteTable:
        """The routes of the configured runtime directory (re-resolved when it changes)."""
        current = default_table()
        if self._table is None or self._table.directory != current.directory:
            self._table = current
        return self._table

    def _target(self, scope: Scope) -> tuple[str, str] | None:
        path: str = scope["path"]
        if path.startswith("/apps/"):
            parts = path.split("/", 4)  # "", "apps", slug, env, rest
            if len(parts) >= 4 and parts[2] and parts[3]:
                rest = "/" + (parts[4] if len(parts) > 4 else "")
                return f"{parts[2]}-{parts[3]}", rest
            return None
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = value.decode("latin-1").rsplit(":", 1)[0] if b"]" not in value else ""
                if host and host not in ("127.0.0.1", "localhost"):
                    key = self.table.key_for_host(host)
                    if key is not None:
                        return key, path
                break
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self._target(scope) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        key, path = target
        query = scope.get("query_string", b"")
        if query:
            path = f"{path}?{query.decode('latin-1')}"
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            answer = await forward(
                self.table,
                key,
                scope["method"],
                path,
                list(scope.get("headers", [])),
                body,
                timeout=get_settings().deploy_proxy_timeout_seconds,
            )
            status, headers, content = answer.status, answer.headers, answer.body
        except NoReplica as exc:
            status = 503
            content = json.dumps(
                {
                    "error": {
                        "code": "unavailable",
                        "message": f"No replica of {key} answered: {exc}",
                    }
                }
            ).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"retry-after", b"1"),
                (b"content-length", str(len(content)).encode()),
            ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


# ---------------------------------------------------------------- bindings and storage ---
@router.post(
    "/resources/{resource_id}/bindings",
    status_code=201,
    summary="Bind a resource to a project environment (its variables on the next deploy)",
)
def create_project_binding(
    resource_id: str, body: ProjectBindingCreate, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    binding = service.create_binding(db, principal.org_id, resource_id, body)
    return service.binding_view(db, binding)


@router.get(
    "/resources/{resource_id}/bindings",
    summary="Project environments a resource is bound to (`stale`: rotated since last deploy)",
)
def list_project_bindings(resource_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    rows = service.list_resource_bindings(db, principal.org_id, resource_id)
    return {"data": [service.binding_view(db, b) for b in rows], "next_cursor": None}


@router.delete(
    "/resources/{resource_id}/bindings/{binding_id}",
    status_code=204,
    summary="Remove a binding (its variables leave the next deploy)",
)
def delete_project_binding(
    resource_id: str, binding_id: str, principal: CurrentPrincipal, db: Db
) -> Response:
    service.delete_binding(db, principal.org_id, resource_id, binding_id)
    return Response(status_code=204)


class StorageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment: str | None = None


@router.get("/projects/{project_id}/storage", summary="Blob storage of a project's environments")
def list_storage(
    project_id: str, principal: CurrentPrincipal, db: Db, query: Annotated[StorageQuery, Query()]
) -> dict[str, Any]:
    project = service.get_project(db, principal.org_id, project_id)
    rows = service.storage_of(db, project, query.environment)
    return {"data": [service.binding_view(db, b) for b in rows], "next_cursor": None}


@router.post(
    "/projects/{project_id}/storage",
    status_code=202,
    summary="Create blob storage (a resource; its BLOB_* variables on the next deploy)",
)
def create_storage(
    project_id: str, body: StorageCreate, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    project = service.get_project(db, principal.org_id, project_id)
    binding = service.create_storage(db, project, body)
    return accepted_object(
        service.binding_view(db, binding), f"/v1/resources/{binding.resource_id}"
    )


@router.delete(
    "/projects/{project_id}/storage/{name}", status_code=204, summary="Delete blob storage"
)
def delete_storage(
    project_id: str,
    name: str,
    principal: CurrentPrincipal,
    db: Db,
    query: Annotated[EnvQuery, Query()],
) -> Response:
    project = service.get_project(db, principal.org_id, project_id)
    service.delete_storage(db, project, name, query.environment)
    return Response(status_code=204)
