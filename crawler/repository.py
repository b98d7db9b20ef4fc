"""Queries of the crawl domain: the store-backed frontier shared by every worker of a crawl.

Functions take the caller's session and never commit. Claims and completions first take the
job row's write lock (the same lock as ``store.jobs.increment_progress``), so the page budget
(``crawled + claimed < max_pages``), the duplicate-content check and the progress counters stay
exact however many workers crawl one site.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from common.timeutil import utcnow
from crawler.models import CrawlPage
from store import jobs as job_store
from store.models import Job, ResultItem

QUEUED, CLAIMED, CRAWLED, FAILED, SKIPPED = "queued", "claimed", "crawled", "failed", "skipped"


def url_key(normalized_url: str) -> str:
    return hashlib.sha256(normalized_url.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Claimed:
    id: int
    url: str
    depth: int


def insert_urls(session: Session, job_id: str, items: Iterable[tuple[str, int]]) -> int:
    """Add normalized URLs (url, depth) not yet known to the crawl; return how many were new."""
    first: dict[str, int] = {}
    for url, depth in items:
        first.setdefault(url, depth)  # keep the order found and the shallowest first sighting
    rows = [
        {"job_id": job_id, "url_key": url_key(url), "url": url, "depth": depth, "status": QUEUED}
        for url, depth in first.items()
    ]
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        insert(CrawlPage)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["job_id", "url_key"])
        .returning(CrawlPage.id)
    )
    return len(session.execute(stmt).all())


def lock_job(session: Session, job_id: str) -> dict[str, Any] | None:
    """Serialise with every other writer of this crawl; returns the job's progress, or None
    once the job is no longer running (a terminal crawl's pages and counters never change)."""
    if not job_store.hold_running(session, job_id):
        return None
    return dict(session.scalar(select(Job.progress).where(Job.id == job_id)) or {})


def claim(
    session: Session, job_id: str, *, limit: int, max_pages: int, worker: str
) -> list[Claimed]:
    """Hand out up to ``limit`` queued URLs while ``crawled + claimed < max_pages``."""
    progress = lock_job(session, job_id)
    if progress is None:
        return []
    in_flight = (
        session.scalar(
            select(func.count()).where(CrawlPage.job_id == job_id, CrawlPage.status == CLAIMED)
        )
        or 0
    )
    budget = max_pages - int(progress.get("pages_crawled", 0)) - in_flight
    if budget <= 0:
        return []
    rows = session.execute(
        select(CrawlPage.id, CrawlPage.url, CrawlPage.depth)
        .where(CrawlPage.job_id == job_id, CrawlPage.status == QUEUED)
        .order_by(CrawlPage.id)
        .limit(min(limit, budget))
    ).all()
    if rows:
        session.execute(
            update(CrawlPage)
            .where(CrawlPage.id.in_([r.id for r in rows]))
            .values(status=CLAIMED, claimed_by=worker, claimed_at=utcnow(), updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return [Claimed(r.id, r.url, r.depth) for r in rows]


def release_stale(session: Session, job_id: str, older_than: datetime) -> int:
    """Put back URLs claimed by a worker that died (claimed before ``older_than``)."""
    result = session.execute(
        update(CrawlPage)
        .where(
            CrawlPage.job_id == job_id,
            CrawlPage.status == CLAIMED,
            CrawlPage.claimed_at < older_than,
        )
        .values(status=QUEUED, claimed_by=None, claimed_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def release_worker(session: Session, job_id: str, worker: str) -> None:
    """Give back what a stopping worker still holds (cancel, time limit)."""
    session.execute(
        update(CrawlPage)
        .where(
            CrawlPage.job_id == job_id, CrawlPage.status == CLAIMED, CrawlPage.claimed_by == worker
        )
        .values(status=QUEUED, claimed_by=None, claimed_at=None)
        .execution_options(synchronize_session=False)
    )


def contents_seen(session: Session, job_id: str, hashes: Iterable[str]) -> set[str]:
    """Which of ``hashes`` an already crawled page of the job has (one query for a batch)."""
    wanted = list(set(hashes))
    if not wanted:
        return set()
    found = session.scalars(
        select(CrawlPage.content_hash).where(
            CrawlPage.job_id == job_id,
            CrawlPage.content_hash.in_(wanted),
            CrawlPage.status == CRAWLED,
        )
    ).all()
    return {h for h in found if h is not None}


@dataclass(frozen=True)
class Finish:
    """How one claimed page ended (a row of :func:`finish_pages`)."""

    page_id: int
    status: str
    reason: str | None = None
    message: str | None = None
    status_code: int | None = None
    final_url: str | None = None
    content_hash: str | None = None
    size: int = 0


def finish_pages(session: Session, finished: Sequence[Finish]) -> None:
    """Record how a batch of pages ended: one ``UPDATE`` sent for many rows (executemany)."""
    if not finished:
        return
    now = utcnow()
    session.execute(
        update(CrawlPage),
        [
            {
                "id": f.page_id,
                "status": f.status,
                "reason": f.reason,
                "message": (f.message or "")[:2000] or None,
                "status_code": f.status_code,
                "final_url": f.final_url,
                "content_hash": f.content_hash,
                "size": f.size,
                "updated_at": now,
            }
            for f in finished
        ],
    )


def add_results(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert a batch of result items (``ResultItem`` column values) in one statement."""
    if rows:
        session.execute(insert(ResultItem), list(rows))


def counts(session: Session, job_id: str) -> dict[str, int]:
    rows = session.execute(
        select(CrawlPage.status, func.count())
        .where(CrawlPage.job_id == job_id)
        .group_by(CrawlPage.status)
    ).all()
    return {str(status): int(n) for status, n in rows}


def list_problems(
    session: Session, job_id: str, *, after_id: int, limit: int
) -> Sequence[CrawlPage]:
    """Failed and skipped URLs (robots blocks included), keyset by id."""
    return session.scalars(
        select(CrawlPage)
        .where(
            CrawlPage.job_id == job_id,
            CrawlPage.status.in_([FAILED, SKIPPED]),
            CrawlPage.id > after_id,
        )
        .order_by(CrawlPage.id)
        .limit(limit)
    ).all()


def list_results(
    session: Session, job_id: str, *, after_seq: int, limit: int
) -> Sequence[ResultItem]:
    """Crawled pages' result items, keyset by seq."""
    return session.scalars(
        select(ResultItem)
        .where(ResultItem.job_id == job_id, ResultItem.seq > after_seq)
        .order_by(ResultItem.seq)
        .limit(limit)
    ).all()
