"""One site crawled by several worker processes at once (real prefork ``celery worker``
subprocesses): counters stay exact, no page is crawled twice, the budget is never exceeded."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from crawler.models import CrawlPage
from jobs.service import validate_input
from store import jobs as job_store
from store.db import session_scope
from tests.helpers import WorkerProcess, wait_for_job
from tests.sites.site import GeneratedSite
from workers.app import celery_app

pytestmark = [pytest.mark.e2e]


def submit_to(queue: str, org_id: str, payload: dict[str, Any]) -> str:
    """Create a crawl job and send it to a private queue: only this test's worker processes
    take it (the session's in-process worker, when running, consumes the shared queues)."""
    with session_scope() as session:
        job = job_store.insert_job(
            session, org_id=org_id, kind="crawl", input=validate_input("crawl", payload)
        )
        job_id = job.id
    celery_app.send_task("crawl.run", args=[job_id], queue=queue)
    return job_id


@pytest.fixture
def crawl_workers(migrated: dict[str, object], site: GeneratedSite) -> Iterator[str]:
    """Two prefork worker processes on a private queue; yields the queue's name."""
    env = {
        "CONVEYOR_CRAWL_ALLOWED_HOSTS": site.host,
        "CONVEYOR_CRAWL_SPLIT_THRESHOLD": "20",
        "CONVEYOR_CRAWL_SPLIT_WORKERS": "3",
    }
    queue = f"crawl-split-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess([queue], pool="prefork", concurrency=2, env=env)
    yield queue
    worker.stop()


@pytest.mark.parametrize("max_pages", [1000, 150])
def test_site_crawled_by_several_workers_with_exact_counters(
    client: Any, org: Any, crawl_workers: str, max_pages: int
) -> None:
    with GeneratedSite(pages=400, traps=False) as big:
        payload = {"url": f"{big.base}/", "mode": "full", "max_pages": max_pages}
        job_id = submit_to(crawl_workers, org.org_id, payload)
        job = wait_for_job(client, job_id, org.headers, timeout=300)
    assert job["status"] == "completed", job
    result = client.get(f"/v1/jobs/{job['id']}/result?format=json", headers=org.headers)
    pages = [json.loads(line) for line in result.text.splitlines()]
    urls = [p["url"] for p in pages]
    assert len(urls) == len(set(urls)) == job["pages_crawled"]
    with session_scope() as session:
        rows = session.execute(
            select(CrawlPage.status, CrawlPage.claimed_by).where(CrawlPage.job_id == job["id"])
        ).all()
    by_status: dict[str, int] = {}
    for status, _ in rows:
        by_status[status] = by_status.get(status, 0) + 1
    assert by_status.get("crawled", 0) == job["pages_crawled"]
    assert by_status.get("failed", 0) == job["pages_failed"]
    assert len(rows) == job["pages_discovered"]
    assert by_status.get("claimed", 0) == 0
    if max_pages < 400:
        assert job["pages_crawled"] == max_pages  # exact, however many workers raced
    else:
        titles = {p["title"] for p in pages if p["title"].startswith("Article ")}
        assert len(titles) == 400
        assert by_status.get("queued", 0) == 0
    pids = {c.split("-")[1] for _, c in rows if c}  # claimed_by is role-pid-nonce
    assert len(pids) >= 2, pids  # several worker processes crawled this one site


def test_crawl_survives_its_worker_being_killed(client: Any, org: Any, site: GeneratedSite) -> None:
    """SIGKILL the whole worker mid-crawl: the job is redelivered to a new worker, the dead
    worker's claimed URLs go back to the queue, and the crawl completes with exact counters."""
    base_env = {
        "CONVEYOR_CRAWL_ALLOWED_HOSTS": site.host,
        "CONVEYOR_VISIBILITY_TIMEOUT": "5",
        "CONVEYOR_CRAWL_STALE_CLAIM_SECONDS": "2",
        "CONVEYOR_CRAWL_SPLIT_THRESHOLD": "100000",
    }
    with GeneratedSite(pages=60, traps=False) as small:
        queue = f"crawl-kill-{uuid.uuid4().hex[:8]}"
        slow = WorkerProcess(
            [queue], concurrency=1, env={**base_env, "CONVEYOR_CRAWL_PER_HOST_DELAY_S": "0.2"}
        )
        try:
            payload = {"url": f"{small.base}/list/0", "mode": "full", "use_sitemap": False}
            job_id = submit_to(queue, org.org_id, payload)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                job = client.get(f"/v1/jobs/{job_id}", headers=org.headers).json()
                if job["pages_crawled"] >= 3:
                    break
                time.sleep(0.05)
            slow.kill_all()
        finally:
            slow.stop()
        assert job["status"] == "running" and job["pages_crawled"] < 60
        fresh = WorkerProcess([queue], concurrency=1, env=base_env)
        try:
            done = wait_for_job(client, job_id, org.headers, timeout=120)
        finally:
            fresh.stop()
    assert done["status"] == "completed", done
    assert done["attempts"] >= 2
    pages = client.get(f"/v1/jobs/{job_id}/result?format=json", headers=org.headers).text
    urls = [json.loads(line)["url"] for line in pages.splitlines()]
    assert len(urls) == len(set(urls)) == done["pages_crawled"]
    articles = {u for u in urls if "/articles/" in u}
    assert len(articles) == 60
