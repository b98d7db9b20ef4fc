"""The crawl job's work: ``run_crawl`` (seed, crawl, finish) and ``help_crawl`` (a helper that
crawls a running job's frontier beside it); the map job's: ``run_map``.

A full or select crawl of at least ``crawl_split_threshold`` pages also sends
``crawl_split_workers - 1`` ``crawl.batch`` helper messages (through the outbox) to the queue the
job came from, so several worker processes crawl one site at once.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from common.errors import JobFailed
from config import get_settings
from config.queues import CRAWL
from crawler.runtime import get_runtime
from crawler.schemas import CrawlRequest, MapRequest
from crawler.service import WorkerOptions, empty_result_error, run_worker, seed, seed_sitemap
from crawler.site_map import map_site
from jobs.context import JobContext
from store import jobs as job_store
from store.db import session_scope
from store.jobs import JobStatus
from store.models import Job
from workers import outbox

#: The Celery task name of a crawl helper (declared in ``tasks/crawl.py``).
BATCH_TASK = "crawl.batch"


def _options(role: str) -> WorkerOptions:
    settings = get_settings()
    return WorkerOptions(
        concurrency=settings.crawl_global_concurrency,
        per_host=settings.crawl_per_host_concurrency,
        stale_after_s=settings.crawl_stale_claim_seconds,
        worker_id=f"{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
    )


def run_crawl(ctx: JobContext) -> None:
    """Crawl one page, a whole site, or a list of URLs into Markdown."""
    request = CrawlRequest.model_validate(ctx.input)
    runtime = get_runtime()
    runtime.run(seed(ctx.job_id, request, runtime))
    settings = get_settings()
    if request.mode != "single" and request.page_budget >= settings.crawl_split_threshold:
        helpers = max(0, settings.crawl_split_workers - 1)
        queue = ctx.queue or CRAWL
        outbox.send([outbox.Message(BATCH_TASK, (ctx.job_id,), queue) for _ in range(helpers)])
    runtime.run(
        run_worker(
            ctx.job_id, request, runtime,
            cancelled=lambda: ctx.cancelled(min_interval=1.0), options=_options("main"),
            background=seed_sitemap(ctx.job_id, request, runtime),
        )
    )  # fmt: skip
    ctx.check_cancelled()
    failure = empty_result_error(ctx.job_id)
    if failure is not None:
        raise JobFailed(failure[1], code=failure[0])


def _job_running(job_id: str) -> bool:
    with session_scope() as session:
        return job_store.status_of(session, job_id) == JobStatus.RUNNING


def help_crawl(job_id: str) -> None:
    """Help crawl a running job's frontier; returns when it is exhausted or the job stopped."""
    with session_scope() as session:
        row = session.get(Job, job_id)
        payload: dict[str, Any] | None = dict(row.input) if row is not None else None
    if payload is None or not _job_running(job_id):
        return
    request = CrawlRequest.model_validate(payload)
    runtime = get_runtime()
    state = {"checked": 0.0}

    def cancelled() -> bool:
        now = time.monotonic()
        if now - state["checked"] < 1.0:
            return False
        state["checked"] = now
        return not _job_running(job_id)

    runtime.run(
        run_worker(job_id, request, runtime, cancelled=cancelled, options=_options("batch"))
    )


def run_map(ctx: JobContext) -> dict[str, Any]:
    """List a site's URLs from its sitemaps and links (``POST /v1/map``)."""
    request = MapRequest.model_validate(ctx.input)
    runtime = get_runtime()
    links = runtime.run(map_site(request, runtime, lambda: ctx.cancelled(min_interval=1.0)))
    ctx.check_cancelled()
    return {"links": links}
