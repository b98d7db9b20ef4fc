"""OpenAI's Batch API and its files, over Conveyor's batch jobs (``inference.batches``):
``POST/GET /v1/batches``, ``GET /v1/batches/{id}`` (the Batch object),
``POST /v1/batches/{id}/cancel``, and ``POST/GET /v1/files``, ``GET/DELETE /v1/files/{id}``,
``GET /v1/files/{id}/content``.

Uploaded input files are kept 24 h in Redis; a batch's output and error files are views of its
job's result. ``POST /v1/batches`` answers 202 with the job (Conveyor's contract; the batch id is
the job id); everything else answers OpenAI's objects, so the official client works unchanged.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from api import access
from api.routers.openai import CurrentPrincipal, cancel_inference, served_models, submit_inference
from api.schemas import ERROR_RESPONSES
from common.errors import NotFound
from common.redis_clients import async_client
from inference import batches
from inference.errors import InvalidRequestError, ModelNotFoundError
from inference.schemas import BatchCreate, BatchRequestLine, InferenceJobInput
from store import jobs as job_store
from store.db import read_session, session_scope
from store.jobs import ACTIVE
from store.models import Job
from store.orgs import Principal

router = APIRouter(
    prefix="/v1",
    tags=["inference"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("inference")],
)

FILE_TTL_SECONDS = 24 * 3600


# -- batches ---------------------------------------------------------------------------------


@router.post("/batches", status_code=202, summary="Run OpenAI batch requests as one job")
async def create_batch(body: BatchCreate, principal: CurrentPrincipal) -> JSONResponse:
    if body.requests is not None:
        lines = body.requests
    elif body.input_file_id:
        lines = await _read_batch_file(principal, body.input_file_id)
    else:
        raise InvalidRequestError("Give `requests` or `input_file_id`.", param="requests")
    if not lines:
        raise InvalidRequestError("The batch holds no requests.", param="requests")
    if body.endpoint and any(line.url != body.endpoint for line in lines):
        raise InvalidRequestError("Every line's url must equal `endpoint`.", param="endpoint")
    models = await served_models()
    for line in lines:
        model = str(line.body.get("model", ""))
        if model not in models:
            raise ModelNotFoundError(model)
    payload = InferenceJobInput(
        operation="batch",
        requests=lines,
        relay=False,
        input_file_id=body.input_file_id,
        endpoint=body.endpoint or lines[0].url,
        metadata=body.metadata,
    )
    return await submit_inference(principal, payload)


def _batch_job(principal: Principal, batch_id: str) -> Job:
    with read_session() as session:
        job = (
            job_store.get_job(session, principal.org_id, batch_id) if len(batch_id) <= 64 else None
        )
    if job is None or not batches.is_batch(job):
        raise NotFound(f"No batch found with id {batch_id!r}.")
    return job


@router.get("/batches", summary="List batches (OpenAI's list: `after`, `limit`)")
async def list_batches(
    principal: CurrentPrincipal,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    def load() -> dict[str, Any]:
        with read_session() as session:
            rows, more = batches.list_batches(session, principal.org_id, after=after, limit=limit)
            data = [batches.batch_view(job) for job in rows]
        return _page(data, more)

    return await run_in_threadpool(load)


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


@router.get("/batches/{batch_id}", summary="Get a batch (OpenAI's Batch object)")
async def get_batch(batch_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
    def load() -> dict[str, Any]:
        return batches.batch_view(_batch_job(principal, batch_id))

    return await run_in_threadpool(load)


@router.post("/batches/{batch_id}/cancel", summary="Cancel a batch")
async def cancel_batch(batch_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
    job = await run_in_threadpool(_batch_job, principal, batch_id)
    if job.status in ACTIVE:
        await cancel_inference(job.id)
    return await run_in_threadpool(lambda: batches.batch_view(_batch_job(principal, batch_id)))


# -- files -----------------------------------------------------------------------------------


def _file_key(org_id: str, file_id: str) -> str:
    return f"conveyor:inference:file:{org_id}:{file_id}"


async def _uploaded(principal: Principal, file_id: str) -> dict[str, Any] | None:
    raw = await async_client().get(_file_key(principal.org_id, file_id))
    return None if raw is None else dict(json.loads(raw))


async def _read_batch_file(principal: Principal, file_id: str) -> list[BatchRequestLine]:
    record = await _uploaded(principal, file_id)
    if record is None:
        raise NotFound(f"File {file_id!r} not found (files are kept 24 h).")
    lines: list[BatchRequestLine] = []
    for number, text in enumerate(str(record["content"]).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            lines.append(BatchRequestLine.model_validate_json(text))
        except ValidationError as exc:
            raise InvalidRequestError(
                f"Line {number} of the input file is not a valid batch request.",
                param="input_file_id",
                details=[{"line": number, "msg": e["msg"]} for e in exc.errors()],
            ) from exc
    return lines


@router.post("/files", summary="Upload a batch input file (JSONL, kept 24 h)")
async def upload_file(
    principal: CurrentPrincipal,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()] = "batch",
) -> dict[str, Any]:
    if purpose != "batch":
        raise InvalidRequestError("Only purpose=batch files are accepted.", param="purpose")
    data = await file.read()
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError("The file must be UTF-8 JSONL.", param="file") from exc
    file_id = "file-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    record = {
        "id": file_id,
        "object": "file",
        "bytes": len(data),
        "created_at": created,
        "expires_at": created + FILE_TTL_SECONDS,
        "filename": file.filename or "batch.jsonl",
        "purpose": purpose,
        "status": "processed",
    }
    await async_client().set(
        _file_key(principal.org_id, file_id),
        json.dumps({**record, "content": content}),
        ex=FILE_TTL_SECONDS,
    )
    return record


def _output_file(principal: Principal, file_id: str) -> tuple[Job, bool, dict[str, Any]] | None:
    """A batch's output or error file: its job, whether it is the error file, its File object."""
    found = batches.output_file_job(file_id)
    if found is None:
        return None
    job_id, errors = found
    with read_session() as session:
        job = job_store.get_job(session, principal.org_id, job_id)
    view = batches.output_file_view(job, errors) if job and batches.is_batch(job) else None
    return None if job is None or view is None else (job, errors, view)


async def _file(principal: Principal, file_id: str) -> tuple[dict[str, Any], Job | None, bool]:
    """The File object (and for an output file its job and kind), or 404."""
    if len(file_id) <= 100:
        record = await _uploaded(principal, file_id)
        if record is not None:
            record.pop("content", None)
            return record, None, False
        output = await run_in_threadpool(_output_file, principal, file_id)
        if output is not None:
            return output[2], output[0], output[1]
    raise NotFound(f"No such file: {file_id!r}.")


@router.get("/files", summary="List files: uploads and batch outputs (newest first)")
async def list_files(
    principal: CurrentPrincipal,
    purpose: Annotated[str | None, Query(max_length=40)] = None,
    after: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> dict[str, Any]:
    files: list[dict[str, Any]] = []
    prefix = _file_key(principal.org_id, "")
    async for key in async_client().scan_iter(match=prefix + "*", count=500):
        raw = await async_client().get(key)
        if raw is not None:
            record = json.loads(raw)
            record.pop("content", None)
            files.append(record)

    def outputs() -> list[dict[str, Any]]:
        views: list[dict[str, Any]] = []
        with read_session() as session:
            rows, _ = batches.list_batches(session, principal.org_id, after=None, limit=100)
        for job in rows:
            for errors in (False, True):
                view = batches.output_file_view(job, errors)
                if view is not None:
                    views.append(view)
        return views

    files += await run_in_threadpool(outputs)
    if purpose:
        files = [f for f in files if f["purpose"] == purpose]
    files.sort(key=lambda f: (f["created_at"], f["id"]), reverse=order == "desc")
    if after:
        ids = [f["id"] for f in files]
        files = files[ids.index(after) + 1 :] if after in ids else []
    return _page(files[:limit], len(files) > limit)


@router.get("/files/{file_id}", summary="Get a file's File object")
async def get_file(file_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
    return (await _file(principal, file_id))[0]


@router.get("/files/{file_id}/content", summary="Download a file (JSONL)")
async def file_content(file_id: str, principal: CurrentPrincipal) -> Response:
    view, job, errors = await _file(principal, file_id)
    if job is None:
        record = await _uploaded(principal, file_id)
        content = str((record or {}).get("content", ""))
        return Response(content.encode(), media_type="application/jsonl")
    return StreamingResponse(
        batches.file_lines(job.id, errors=errors),
        media_type="application/jsonl",
        headers={"Content-Disposition": f'attachment; filename="{view["filename"]}"'},
    )


@router.delete("/files/{file_id}", summary="Delete a file (a batch's output: its result)")
async def delete_file(file_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
    _, job, _ = await _file(principal, file_id)
    if job is None:
        await async_client().delete(_file_key(principal.org_id, file_id))
    else:

        def delete_result() -> None:
            with session_scope() as session:
                job_store.delete_results(session, job.id)

        await run_in_threadpool(delete_result)
    return {"id": file_id, "object": "file", "deleted": True}
