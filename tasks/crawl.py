"""Crawl tasks: ``crawl.run`` (the job: seed, crawl, finish) and ``crawl.batch`` (helpers).

From Python: ``from tasks.crawl import crawl; crawl.submit({"url": ..., "mode": "full"},
org="acme")`` (``crawl.delay(job_id)`` runs an existing job). A full or select crawl bigger
than ``crawl_split_threshold`` pages also enqueues ``crawl_split_workers - 1`` helper tasks on
the ``crawl`` queue, so several worker processes crawl one site at once.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from celery import current_task
from celery.signals import worker_process_shutdown

from common.errors import JobFailed
from config import get_settings
from config.queues import CRAWL, KINDS
from crawler.runtime import get_runtime, shutdown_runtime
from crawler.schemas import CrawlRequest
from crawler.service import WorkerOptions, empty_result_error, run_worker, seed, seed_sitemap
from store import jobs as job_store
from store.db import session_scope
from store.jobs import JobStatus
from store.models import Job
from tasks.runner import JobCancelled, JobContext, job_task
from workers.app import celery_app

log = logging.getLogger(__name__)


def _options(role: str) -> WorkerOptions:
    settings = get_settings()
    return WorkerOptions(
        concurrency=settings.crawl_global_concurrency,
        per_host=settings.crawl_per_host_concurrency,
        stale_after_s=settings.crawl_stale_claim_seconds,
        worker_id=f"{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
    )


@job_task("crawl")
def crawl(ctx: JobContext) -> None:
    """Crawl one page, a whole site, or a list of URLs into Markdown."""
    request = CrawlRequest.model_validate(ctx.input)
    runtime = get_runtime()
    runtime.run(seed(ctx.job_id, request, runtime))
    settings = get_settings()
    if request.mode != "single" and request.page_budget >= settings.crawl_split_threshold:
        # Helpers go to the queue this job came from (``crawl`` unless routed elsewhere).
        delivery = current_task.request.delivery_info if current_task else None
        queue = (delivery or {}).get("routing_key") or CRAWL
        for _ in range(max(0, settings.crawl_split_workers - 1)):
            crawl_batch.apply_async(args=[ctx.job_id], queue=queue)
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


@celery_app.task(
    name="crawl.batch",
    acks_late=True,
    ignore_result=True,
    soft_time_limit=KINDS["crawl_batch"].soft_time_limit,
    time_limit=KINDS["crawl_batch"].time_limit,
)
def crawl_batch(job_id: str) -> None:
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


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    shutdown_runtime()


__all__ = ["JobCancelled", "crawl", "crawl_batch"]
