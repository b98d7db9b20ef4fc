"""How job results are downloaded over HTTP, with per-kind renderers (crawls register theirs).

How a job itself is shown lives with the job domain (``jobs.views.job_to_dict``), so a worker
and the API show it alike.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from common.errors import Gone, NotFound, NotReady
from store import jobs as job_store
from store.jobs import TERMINAL, JobStatus
from store.models import Job

ResultRenderer = Callable[[Job, Request], Response]

#: Kind-specific result downloads (crawls stream Markdown while they run), set by their routers.
result_renderers: dict[str, ResultRenderer] = {}


def ensure_result_available(job: Job, *, partial_ok: bool = False) -> None:
    """Raise the contract's error when a job's result cannot be read now."""
    if job_store.result_gone(job):
        raise Gone("The result has expired or was deleted (results are kept 24 h).")
    if job.status not in TERMINAL and not partial_ok:
        raise NotReady(f"The job is {job.status}; its result is not ready yet.")


def _ndjson(job_id: str) -> Iterator[bytes]:
    for item in job_store.iter_result_items(job_id):
        record = item.data if item.data is not None else {"name": item.name, "body": item.body}
        yield json.dumps(record, separators=(",", ":")).encode() + b"\n"


def default_result(job: Job, request: Request) -> Response:
    """A small result as JSON; a result of many items as NDJSON, streamed."""
    ensure_result_available(job)
    items = job_store.iter_result_items(job.id, batch=2)
    first = next(items, None)
    second = next(items, None)
    if first is None:
        if job.status == JobStatus.COMPLETED:
            return JSONResponse({})
        raise NotFound(f"The job {job.status} and has no result.")
    if second is None and first.name == "result" and first.data is not None:
        return JSONResponse(first.data)
    return StreamingResponse(_ndjson(job.id), media_type="application/x-ndjson")


def render_result(job: Job, request: Request) -> Response:
    return result_renderers.get(job.kind, default_result)(job, request)


def follow_sse(
    request: Request,
    first: list[bytes],
    poll: Callable[[], list[Any]],
    render: Callable[[Any], bytes],
) -> StreamingResponse:
    """An SSE response: ``first`` chunks, then ``render`` of what ``poll`` (blocking, run in a
    thread) returns, every 250 ms until the client leaves; a keep-alive comment after 15 s of
    quiet so proxies keep the stream open."""

    async def events() -> AsyncIterator[bytes]:
        for chunk in first:
            yield chunk
        quiet_since = time.monotonic()
        while not await request.is_disconnected():
            fresh = await run_in_threadpool(poll)
            for item in fresh:
                yield render(item)
            if fresh:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 15:
                quiet_since = time.monotonic()
                yield b": keepalive\n\n"
            await asyncio.sleep(0.25)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
