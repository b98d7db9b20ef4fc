"""The store-backed frontier under concurrency (real PostgreSQL): many workers claiming and
recording at once never exceed the page budget, never crawl a URL twice, and keep the
counters exact."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select

from crawler import repository as repo
from crawler.engine import PageOutcome
from crawler.models import CrawlPage
from crawler.schemas import CrawlRequest, PageRecord
from crawler.service import Finished, make_scope, record
from store import jobs as job_store
from store.db import session_scope
from store.models import Job, ResultItem


def _job(org_id: str, max_pages: int) -> tuple[str, CrawlRequest]:
    request = CrawlRequest(url="http://s.test/", mode="full", max_pages=max_pages)
    with session_scope() as session:
        job = job_store.insert_job(
            session, org_id=org_id, kind="crawl", input=request.model_dump(mode="json")
        )
        repo.insert_urls(session, job.id, [(f"http://s.test/p{i}", 1) for i in range(40)])
        # A crawl's frontier is worked only while the job runs (a terminal job is frozen).
        job_store.transition(
            session, job.id, to=job_store.JobStatus.RUNNING, from_=[job_store.JobStatus.QUEUED]
        )
        return job.id, request


def _outcome(url: str, n: int) -> PageOutcome:
    record_ = PageRecord(url=url, final_url=url, status_code=200, markdown=f"# {url}",
                         fetched_at="2026-01-01T00:00:00Z")  # fmt: skip
    links = [f"http://s.test/p{n}/child{k}" for k in range(3)] + ["http://other.test/x"]
    if n % 5 == 0:
        return PageOutcome(url, "failed", reason="http_error", status_code=500)
    return PageOutcome(url, "crawled", record=record_, links=links, content_hash=url)


def test_concurrent_workers_keep_budget_and_counters_exact(org: Any) -> None:
    job_id, request = _job(org.org_id, max_pages=25)
    scope = make_scope(request)
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            while True:
                with session_scope() as session:
                    claimed = repo.claim(session, job_id, limit=3, max_pages=25, worker=name)
                if not claimed:
                    return
                batch = [Finished(c, _outcome(c.url, c.id)) for c in claimed]
                record(job_id, request, scope, batch)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    with session_scope() as session:
        progress = session.get(Job, job_id).progress  # type: ignore[union-attr]
        rows = session.execute(
            select(CrawlPage.status, CrawlPage.url).where(CrawlPage.job_id == job_id)
        ).all()
        results = session.scalars(select(ResultItem.name).where(ResultItem.job_id == job_id)).all()
    statuses = [r.status for r in rows]
    assert progress["pages_crawled"] == statuses.count("crawled") == 25 == len(results)
    assert len(set(results)) == 25  # no URL recorded twice
    assert progress["pages_failed"] == statuses.count("failed")
    assert statuses.count("claimed") == 0
    # 40 seeded (not counted by this test's seeding) + every in-scope child link, once each.
    assert progress["pages_discovered"] == len(rows) - 40
    assert not any("other.test" in r.url for r in rows)


def test_stale_claims_return_to_the_queue(org: Any) -> None:
    from datetime import timedelta

    from common.timeutil import utcnow

    job_id, _ = _job(org.org_id, max_pages=10)
    with session_scope() as session:
        claimed = repo.claim(session, job_id, limit=4, max_pages=10, worker="dead")
        assert len(claimed) == 4
    with session_scope() as session:
        assert repo.release_stale(session, job_id, utcnow() - timedelta(seconds=60)) == 0
        assert repo.release_stale(session, job_id, utcnow() + timedelta(seconds=1)) == 4
        assert repo.counts(session, job_id).get("claimed", 0) == 0


def test_a_cancelled_crawls_frontier_is_frozen(org: Any) -> None:
    job_id, request = _job(org.org_id, max_pages=10)
    with session_scope() as session:
        (page,) = repo.claim(session, job_id, limit=1, max_pages=10, worker="w")
    with session_scope() as session:
        job_store.transition(
            session, job_id, to=job_store.JobStatus.CANCELLED, from_=list(job_store.ACTIVE)
        )
    # The page in flight finishes after the cancel: nothing of it is recorded.
    record(job_id, request, make_scope(request), [Finished(page, _outcome(page.url, 1))])
    with session_scope() as session:
        assert repo.claim(session, job_id, limit=5, max_pages=10, worker="w") == []
        job = session.get(Job, job_id)
        assert job is not None and "pages_crawled" not in job.progress
        assert session.scalars(select(ResultItem).where(ResultItem.job_id == job_id)).all() == []
