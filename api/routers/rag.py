"""Syft Space's routes: `/v1/datasets` (and their files), `/v1/models/providers`,
`/v1/endpoints` (and their queries) and `/v1/policies`.

Ingestion is an `ingest` job (202 with the job); a query is a synchronous call that searches
the endpoint's datasets and answers through the inference path. Lists answer Conveyor's cursor
pages, or Syft Space's `{items, total, skip, limit}` when `skip` is given.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from api import access
from api.deps import Credentials, CurrentPrincipal, Db, authenticate
from api.schemas import ERROR_RESPONSES
from api.submit import accepted_object
from jobs.views import job_to_dict
from rag import repository, service
from rag.models import Dataset, DatasetFile, Endpoint, Policy, Provider
from rag.policies import Caller
from rag.schemas import (
    DatasetCreate,
    DatasetPatch,
    EndpointCreate,
    EndpointPatch,
    PolicyCreate,
    PolicyPatch,
    ProviderCreate,
    ProviderPatch,
    QueryRequest,
    SyftListQuery,
)
from store.orgs import Principal

router = APIRouter(
    prefix="/v1",
    tags=["rag"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("rag")],
)
ListParams = Annotated[SyftListQuery, Query()]


def _list(
    db: Session, model: Any, org_id: str, q: SyftListQuery, view: Any, where: tuple[Any, ...] = ()
) -> dict[str, Any]:
    rows, next_cursor, total = repository.list_rows(
        db,
        model,
        org_id,
        limit=q.limit,
        cursor=q.cursor,
        skip=q.skip,
        descending=q.sort == "-created_at",
        where=(
            *where,
            *((model.created_at > q.created_after,) if q.created_after else ()),
            *((model.created_at < q.created_before,) if q.created_before else ()),
        ),
    )
    items = [view(r) for r in rows]
    if q.skip is not None:
        return {"items": items, "total": total, "skip": q.skip, "limit": q.limit}
    return {"data": items, "next_cursor": next_cursor}


# -- datasets ------------------------------------------------------------------------------


@router.post("/datasets", status_code=201, summary="Create a dataset (crawl datasets: 201 + job)")
def create_dataset(body: DatasetCreate, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    ds, job = service.create_dataset(db, principal.org_id, body)
    view = service.dataset_view(ds)
    if job is not None:
        view["job"] = job_to_dict(job)
    return JSONResponse(view, status_code=201, headers={"Location": f"/v1/datasets/{ds.id}"})


@router.get("/datasets", summary="List datasets (cursor pages, or skip/limit)")
def list_datasets(principal: CurrentPrincipal, db: Db, query: ListParams) -> dict[str, Any]:
    return _list(db, Dataset, principal.org_id, query, service.dataset_view)


@router.get("/datasets/{dataset_id}", summary="A dataset")
def get_dataset(dataset_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return service.dataset_view(service.get_dataset(db, principal.org_id, dataset_id))


@router.patch("/datasets/{dataset_id}", summary="Rename or describe a dataset")
def patch_dataset(
    dataset_id: str, body: DatasetPatch, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    ds = service.patch_dataset(service.get_dataset(db, principal.org_id, dataset_id), body)
    db.flush()
    return service.dataset_view(ds)


@router.delete("/datasets/{dataset_id}", status_code=204, summary="Delete a dataset and its chunks")
def delete_dataset(dataset_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    service.delete_dataset(db, service.get_dataset(db, principal.org_id, dataset_id))
    return Response(status_code=204)


@router.post(
    "/datasets/{dataset_id}/files",
    status_code=202,
    summary="Upload files (multipart `files`); 202 with the ingest job",
)
async def upload_files(
    dataset_id: str,
    principal: CurrentPrincipal,
    db: Db,
    files: Annotated[list[UploadFile], File(description=".md .txt .html .pdf .jsonl")],
) -> JSONResponse:
    uploads = [(f.filename or "upload", await f.read()) for f in files]
    ds = service.get_dataset(db, principal.org_id, dataset_id)
    job, views = service.add_files(db, ds, uploads)
    if job is None:  # every file was unchanged
        return JSONResponse({"job": None, "files": views}, status_code=200)
    return accepted_object({**job_to_dict(job), "files": views}, f"/v1/jobs/{job.id}")


@router.get("/datasets/{dataset_id}/files", summary="A dataset's files")
def list_files(
    dataset_id: str, principal: CurrentPrincipal, db: Db, query: ListParams
) -> dict[str, Any]:
    ds = service.get_dataset(db, principal.org_id, dataset_id)
    return _list(
        db,
        DatasetFile,
        principal.org_id,
        query,
        service.file_view,
        (DatasetFile.dataset_id == ds.id,),
    )


@router.get("/datasets/{dataset_id}/files/{file_id}", summary="A file")
def get_file(dataset_id: str, file_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    ds = service.get_dataset(db, principal.org_id, dataset_id)
    return service.file_view(service.get_file(db, ds, file_id))


@router.delete(
    "/datasets/{dataset_id}/files/{file_id}", status_code=204, summary="Delete a file's chunks"
)
def delete_file(dataset_id: str, file_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    ds = service.get_dataset(db, principal.org_id, dataset_id)
    service.delete_file(db, ds, service.get_file(db, ds, file_id))
    return Response(status_code=204)


# -- model providers -----------------------------------------------------------------------


@router.post("/models/providers", status_code=201, summary="Add an OpenAI-compatible provider")
def create_provider(body: ProviderCreate, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    p = service.create_provider(db, principal.org_id, body)
    return JSONResponse(service.provider_view(p), status_code=201)


@router.get("/models/providers", summary="Providers: the built-in conveyor one, then yours")
async def list_providers(principal: CurrentPrincipal, db: Db, query: ListParams) -> dict[str, Any]:
    from api.routers.openai import served_models

    page = _list(db, Provider, principal.org_id, query, service.provider_view)
    if query.cursor is None and not query.skip:
        builtin = service.builtin_provider(await served_models())
        key = "items" if query.skip is not None else "data"
        page[key] = [builtin, *page[key]]
        if "total" in page:
            page["total"] += 1
    return page


@router.get("/models/providers/{provider_id}", summary="A provider (api_key masked)")
def get_provider(provider_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return service.provider_view(
        service.get_row(db, Provider, principal.org_id, provider_id, "Provider")
    )


@router.patch("/models/providers/{provider_id}", summary="Change a provider")
def patch_provider(
    provider_id: str, body: ProviderPatch, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    p = service.get_row(db, Provider, principal.org_id, provider_id, "Provider")
    service.patch_provider(p, body)
    db.flush()
    return service.provider_view(p)


@router.delete("/models/providers/{provider_id}", status_code=204, summary="Delete a provider")
def delete_provider(provider_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    db.delete(service.get_row(db, Provider, principal.org_id, provider_id, "Provider"))
    return Response(status_code=204)


# -- policies ------------------------------------------------------------------------------


@router.post("/policies", status_code=201, summary="Create an access, rate_limit or budget policy")
def create_policy(body: PolicyCreate, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    return JSONResponse(
        service.policy_view(service.create_policy(db, principal.org_id, body)), status_code=201
    )


@router.get("/policies", summary="List policies")
def list_policies(principal: CurrentPrincipal, db: Db, query: ListParams) -> dict[str, Any]:
    return _list(db, Policy, principal.org_id, query, service.policy_view)


@router.get("/policies/{policy_id}", summary="A policy")
def get_policy(policy_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return service.policy_view(service.get_row(db, Policy, principal.org_id, policy_id, "Policy"))


@router.patch("/policies/{policy_id}", summary="Change a policy")
def patch_policy(
    policy_id: str, body: PolicyPatch, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    p = service.patch_policy(
        service.get_row(db, Policy, principal.org_id, policy_id, "Policy"), body
    )
    db.flush()
    return service.policy_view(p)


@router.delete("/policies/{policy_id}", status_code=204, summary="Delete a policy")
def delete_policy(policy_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    db.delete(service.get_row(db, Policy, principal.org_id, policy_id, "Policy"))
    return Response(status_code=204)


# -- endpoints -----------------------------------------------------------------------------


@router.post("/endpoints", status_code=201, summary="Publish an endpoint over datasets")
def create_endpoint(body: EndpointCreate, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    e = service.create_endpoint(db, principal.org_id, body)
    return JSONResponse(
        service.endpoint_view(e), status_code=201, headers={"Location": f"/v1/endpoints/{e.slug}"}
    )


@router.get("/endpoints", summary="List endpoints")
def list_endpoints(principal: CurrentPrincipal, db: Db, query: ListParams) -> dict[str, Any]:
    return _list(db, Endpoint, principal.org_id, query, service.endpoint_view)


@router.get("/endpoints/{slug}", summary="An endpoint (by slug or id)")
def get_endpoint(slug: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return service.endpoint_view(service.get_endpoint(db, principal.org_id, slug))


@router.patch("/endpoints/{slug}", summary="Change an endpoint (datasets, model, policy_ids …)")
def patch_endpoint(
    slug: str, body: EndpointPatch, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    e = service.patch_endpoint(db, service.get_endpoint(db, principal.org_id, slug), body)
    db.flush()
    return service.endpoint_view(e)


@router.delete("/endpoints/{slug}", status_code=204, summary="Delete an endpoint")
def delete_endpoint(slug: str, principal: CurrentPrincipal, db: Db) -> Response:
    db.delete(service.get_endpoint(db, principal.org_id, slug))
    return Response(status_code=204)


def _caller(request: Request, db: Session, credentials: Any) -> Caller:
    """The key's organisation, or an anonymous caller (public endpoints) when no key is sent."""
    if credentials is None:
        return Caller(None, None, request.client.host if request.client else "")
    principal: Principal = authenticate(db, credentials)
    request.state.principal = principal
    return Caller(principal.org_id, principal.key_id)


@router.post(
    "/endpoints/{slug}/query",
    dependencies=[access.public_route()],  # the endpoint's own access policies decide
    summary="Ask an endpoint: {answer, sources, usage} (OpenAI chunk SSE with stream=true)",
)
async def query_endpoint(
    slug: str, body: QueryRequest, request: Request, db: Db, credentials: Credentials
) -> Any:
    caller = _caller(request, db, credentials)
    if body.stream:
        events = await service.stream_query(slug, caller, body)
        return StreamingResponse(events, media_type="text/event-stream")
    return await service.query(slug, caller, body)
