"""The ingest job's work (``ingest`` queue): load each pending file (or each page of a finished
crawl), extract its text, chunk it, embed the chunks with this worker process's engine
(``rag.embedder.EMBEDDER``) and swap the file's chunks in the index. Counters:
``files_total/files_done/files_failed/files_skipped/chunks_indexed``. A bad file fails alone
(its row says why); the job fails only when every file did."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from common.errors import ConveyorError, ErrorCode, JobFailed
from config import get_settings
from jobs.context import JobCancelled, JobContext
from rag import documents, repository
from rag.backends import get_index
from rag.backends.base import IndexedChunk
from rag.embedder import EMBEDDER
from rag.models import Dataset, DatasetFile
from rag.schemas import IngestJobInput
from store import jobs as job_store
from store.db import session_scope
from store.models import Job

#: Files of one job in flight at once.
FILES_AT_ONCE = 4


def run_ingest(ctx: JobContext) -> dict[str, Any]:
    payload = IngestJobInput.model_validate(ctx.input)
    with session_scope() as session:
        ds = session.get(Dataset, payload.dataset_id)
        if ds is None:
            raise JobFailed("The dataset was deleted.", code=ErrorCode.NOT_FOUND)
        model, size, overlap = ds.embedding_model, ds.chunk_size, ds.chunk_overlap
    if payload.crawl_job_id:
        file_ids = _files_from_crawl(ctx, payload.dataset_id, payload.crawl_job_id)
    else:
        file_ids = payload.file_ids
    ctx.progress(files_total=len(file_ids), files_done=0, files_failed=0, chunks_indexed=0)
    embedder = EMBEDDER.get()
    size = min(size, embedder.max_tokens(model))  # longer chunks would be truncated unseen
    overlap = min(overlap, size // 2)
    done = failed = chunks_total = 0

    def one(file_id: str) -> int:
        if ctx.cancelled(1.0):
            return 0
        return _ingest_file(payload.dataset_id, file_id, model, size, overlap)

    # A few files at once: their chunks meet in the engine's batches (fuller forward passes).
    with ThreadPoolExecutor(FILES_AT_ONCE, thread_name_prefix="ingest") as pool:
        futures = {pool.submit(one, file_id): file_id for file_id in file_ids}
        for future in as_completed(futures):
            try:
                chunks_total += future.result()
                done += 1
            except ConveyorError as exc:
                failed += 1
                with session_scope() as session:
                    repository.set_file(
                        session,
                        futures[future],
                        status="failed",
                        error={"code": exc.code, "message": exc.message},
                    )
            ctx.progress(files_done=done, files_failed=failed, chunks_indexed=chunks_total)
    ctx.check_cancelled()
    ctx.flush_progress()
    if file_ids and not done:
        with session_scope() as session:
            errors = [f.error for f in repository.files_of(session, payload.dataset_id, file_ids)]
        first = next((e for e in errors if e), {"message": "no file could be indexed"})
        raise JobFailed(
            f"No file could be indexed: {first.get('message')}", code=ErrorCode.VALIDATION_ERROR
        )
    return {"dataset_id": payload.dataset_id, "files_done": done, "files_failed": failed,
            "chunks_indexed": chunks_total}  # fmt: skip


def _ingest_file(dataset_id: str, file_id: str, model: str, size: int, overlap: int) -> int:
    with session_scope() as session:
        row = session.get(DatasetFile, file_id)
        if row is None or row.dataset_id != dataset_id:
            raise JobFailed(f"File {file_id!r} was deleted.", code=ErrorCode.NOT_FOUND)
        name, source, data = row.name, row.source, repository.file_content(session, file_id)
        repository.set_file(session, file_id, status="indexing")
    media_type = documents.sniff(name, data)
    text = documents.extract(name, media_type, data)
    embedder = EMBEDDER.get()
    chunks = documents.chunk_markdown(
        text, lambda t: embedder.token_spans(model, t), size=size, overlap=overlap
    )
    vectors, _ = embedder.embed(
        model, [f"{c.heading}\n{c.text}" if c.heading else c.text for c in chunks]
    )
    indexed = [IndexedChunk(c.text, c.heading, c.start, c.end) for c in chunks]
    written = get_index().replace_file(dataset_id, file_id, source, indexed, vectors)
    with session_scope() as session:
        if session.get(DatasetFile, file_id) is None:  # deleted while it was indexed
            get_index().delete_file(dataset_id, file_id)
            return 0
        repository.set_file(session, file_id, status="indexed", error=None, chunks=written)
    return written


def _files_from_crawl(ctx: JobContext, dataset_id: str, crawl_job_id: str) -> list[str]:
    """Wait for the crawl to finish, then one file per crawled page (the URL is its source)."""
    deadline = time.monotonic() + get_settings().rag_crawl_wait_seconds
    while True:
        with session_scope() as session:
            job = session.get(Job, crawl_job_id)
            status = job.status if job is not None else None
        if status == "completed":
            break
        if status in (None, "failed", "cancelled"):
            raise JobFailed(
                f"The crawl {crawl_job_id} ended {status or 'deleted'}; nothing to ingest.",
                code=ErrorCode.VALIDATION_ERROR,
            )
        if time.monotonic() > deadline:
            raise JobFailed(f"The crawl {crawl_job_id} did not finish in time.", code="timed_out")
        if ctx.cancelled(0.0):
            raise JobCancelled(ctx.job_id)
        time.sleep(0.5)
    file_ids: list[str] = []
    for item in job_store.iter_result_items(crawl_job_id):
        data = item.data or {}
        markdown = str(data.get("markdown") or "")
        url = str(data.get("final_url") or data.get("url") or item.name)
        if not markdown.strip():
            continue
        content = markdown.encode("utf-8")
        digest = hashlib.sha256(content).hexdigest()
        with session_scope() as session:
            row = repository.file_by_name(session, dataset_id, url)
            if row is not None and row.content_hash == digest and row.status == "indexed":
                continue
            ds = session.get(Dataset, dataset_id)
            assert ds is not None
            if row is None:
                row = DatasetFile(org_id=ds.org_id, dataset_id=dataset_id, name=url, source=url)
                session.add(row)
            row.media_type, row.size, row.content_hash, row.content = (
                "text/markdown", len(content), digest, content,
            )  # fmt: skip
            row.status, row.job_id = "pending", ctx.job_id
            session.flush()
            file_ids.append(row.id)
    return file_ids
