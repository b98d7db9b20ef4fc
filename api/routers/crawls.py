"""``/v1/crawls`` (create a crawl job) and the crawl views of ``/v1/jobs/{id}``:
Syttra's top-level fields, the result download in every export format, ``/pages``, ``/errors``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api import access
from api.deps import CurrentPrincipal, Db
from api.routers.jobs import load_job
from api.schemas import ERROR_RESPONSES, JobOut, Page
from api.submit import accepted, submit_job
from api.views import ensure_result_available, result_renderers
from common.errors import NotFound, ValidationFailed
from crawler import repository as repo
from crawler.schemas import EXPORT_FORMATS, CrawlProblem, CrawlRequest, PageRecord
from store import jobs as job_store
from store.models import Job

router = APIRouter(
    tags=["crawls"], responses=ERROR_RESPONSES, dependencies=[access.requires_group("crawls")]
)
SEPARATOR = b"\n\n---\n\n"


class ListParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = None


def _encode(n: int) -> str:
    return base64.urlsafe_b64encode(str(n).encode()).decode().rstrip("=")


def _decode(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (ValueError, binascii.Error) as exc:
        raise ValidationFailed(
            "Invalid cursor.",
            details=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
        ) from exc


@router.post(
    "/v1/crawls",
    status_code=202,
    response_model=JobOut,
    summary="Start a crawl (single page, full site or selected URLs)",
)
def create_crawl(body: CrawlRequest, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    job = submit_job(db, principal, "crawl", body.model_dump(mode="json"))
    return accepted(job, db)


def _records(job_id: str) -> Iterator[dict[str, Any]]:
    for item in job_store.iter_result_items(job_id):
        if item.data is not None and "url" in item.data:
            yield item.data


def _joined(job_id: str, field: str, *, headers: bool = False) -> Iterator[bytes]:
    """The pages' ``field`` one after the other, ``---``-separated; with ``headers`` (the
    Markdown export of a multi-page crawl) each page starts with ``<!-- source: URL -->``."""
    first = True
    for record in _records(job_id):
        if not first:
            yield SEPARATOR
        first = False
        if headers:
            yield f"<!-- source: {_comment_safe(record['url'])} -->\n\n".encode()
        yield str(record.get(field) or "").encode("utf-8")


def _comment_safe(text: str) -> str:
    return text.replace("--", "%2D%2D")


def _ndjson(job_id: str, fields: tuple[str, ...] | None = None) -> Iterator[bytes]:
    for record in _records(job_id):
        if fields is not None:
            record = {k: record.get(k) for k in fields}
        yield json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class _Chunks(io.RawIOBase):
    """A write-only stream that hands its bytes to a generator (zip without a seekable file)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def _screenshots_zip(job_id: str) -> Iterator[bytes]:
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for n, record in enumerate(_records(job_id), start=1):
            if record.get("screenshot"):
                slug = re.sub(r"[^A-Za-z0-9]+", "-", record["url"].split("://", 1)[-1])[:80]
                archive.writestr(
                    f"{n:05d}-{slug.strip('-')}.png", base64.b64decode(record["screenshot"])
                )
                yield sink.drain()
    yield sink.drain()


def render_crawl_result(job: Job, request: Request) -> Response:
    """Stream the pages so far (while running) or all of them, in the requested format."""
    ensure_result_available(job, partial_ok=True)
    formats = list(job.input.get("export_formats") or ["markdown"])
    fmt = request.query_params.get("format") or formats[0]
    if fmt not in EXPORT_FORMATS:
        raise ValidationFailed(f"Unknown format {fmt!r}.")
    if fmt != "json" and fmt not in formats:
        raise ValidationFailed(
            f"Format {fmt!r} was not requested in export_formats ({', '.join(formats)}).",
            details=[{"loc": ["query", "format"], "msg": "not in export_formats", "type": "enum"}],
        )
    single = job.input.get("mode", "single") == "single"
    stem = "result" if single else f"crawl-{job.id}"
    if fmt in ("markdown", "html", "text"):
        ext = {"markdown": "md", "html": "html", "text": "txt"}[fmt]
        media = {"markdown": "text/markdown", "html": "text/html", "text": "text/plain"}[fmt]
        return StreamingResponse(
            _joined(job.id, fmt, headers=fmt == "markdown" and not single),
            media_type=f"{media}; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{stem}.{ext}"'},
        )
    if fmt == "screenshot":
        return StreamingResponse(
            _screenshots_zip(job.id),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{stem}-screenshots.zip"'},
        )
    fields = ("url", "final_url", "links") if fmt == "links" else None
    return StreamingResponse(
        _ndjson(job.id, fields),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{stem}.ndjson"'},
    )


def _crawl_job(db: Db, principal: CurrentPrincipal, job_id: str) -> Job:
    job = load_job(db, principal, job_id)
    if job.kind != "crawl":
        raise NotFound(f"Job {job_id!r} is not a crawl.")
    return job


@router.get(
    "/v1/jobs/{job_id}/pages",
    response_model=Page[PageRecord],
    summary="Crawled pages, one record each (cursor pages)",
)
def list_pages(
    job_id: str, principal: CurrentPrincipal, db: Db, params: Annotated[ListParams, Query()]
) -> dict[str, Any]:
    job = _crawl_job(db, principal, job_id)
    ensure_result_available(job, partial_ok=True)
    rows = repo.list_results(db, job.id, after_seq=_decode(params.cursor), limit=params.limit)
    data = [row.data or {} for row in rows]
    more = len(rows) == params.limit
    return {"data": data, "next_cursor": _encode(rows[-1].seq) if rows and more else None}


@router.get(
    "/v1/jobs/{job_id}/errors",
    response_model=Page[CrawlProblem],
    summary="Failed URLs with their reason, and robots.txt blocks",
)
def list_errors(
    job_id: str, principal: CurrentPrincipal, db: Db, params: Annotated[ListParams, Query()]
) -> dict[str, Any]:
    job = _crawl_job(db, principal, job_id)
    rows = repo.list_problems(db, job.id, after_id=_decode(params.cursor), limit=params.limit)
    data = [
        {
            "url": row.url,
            "status": row.status,
            "reason": row.reason,
            "message": row.message,
            "status_code": row.status_code,
            "final_url": row.final_url,
            "robots_blocked": row.reason == "robots_blocked",
        }
        for row in rows
    ]
    more = len(rows) == params.limit
    return {"data": data, "next_cursor": _encode(rows[-1].id) if rows and more else None}


result_renderers["crawl"] = render_crawl_result
