"""Crawl tasks: ``crawl.run`` (the job), ``crawl.batch`` (helpers of a big crawl) and
``map.run`` (a site's URLs, without converting pages); the work is ``crawler.jobs``.

From Python: ``from tasks.crawl import crawl; crawl.submit({"url": ..., "mode": "full"},
org="acme")`` (``crawl.delay(job_id)`` runs an existing job).
"""

from __future__ import annotations

from typing import Any

from config.queues import KINDS
from crawler.jobs import BATCH_TASK, help_crawl, run_crawl, run_map
from jobs.context import JobContext
from tasks.runner import job_task
from workers.app import celery_app


@job_task("crawl")
def crawl(ctx: JobContext) -> None:
    """Crawl one page, a whole site, or a list of URLs into Markdown."""
    run_crawl(ctx)


@job_task("map")
def map_urls(ctx: JobContext) -> dict[str, Any]:
    """List a site's URLs from its sitemaps and links (``POST /v1/map``)."""
    return run_map(ctx)


@celery_app.task(
    name=BATCH_TASK,
    acks_late=True,
    ignore_result=True,
    soft_time_limit=KINDS["crawl_batch"].soft_time_limit,
    time_limit=KINDS["crawl_batch"].time_limit,
)
def crawl_batch(job_id: str) -> None:
    """Help crawl a running job's frontier; returns when it is exhausted or the job stopped."""
    help_crawl(job_id)
