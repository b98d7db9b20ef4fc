"""The crawl service: seeds a crawl's frontier and runs one worker's share of it.

A crawl job's main task seeds the store-backed frontier (start URL, sitemap, selected URLs)
and then crawls like every helper task: claim a batch of URLs, crawl them concurrently
(per-host cap and robots crawl-delay), record the outcomes in one transaction (result items,
new links, exact counters), repeat until nothing is queued or claimed anywhere. Helpers
(``crawl.batch``) let several worker processes crawl one site at once. Cancellation is checked
between pages; a cancelled worker gives its unfinished claims back and keeps finished pages.

Unlike request-scoped services, this one owns its transactions — one per claimed batch and
one per recorded batch — because a crawl runs for minutes and its pages and counters must be
visible (and shared with other workers) while it runs. The queries themselves live in
``crawler.repository`` and never commit.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from common.timeutil import utcnow
from config import get_settings
from crawler import repository as repo
from crawler.engine import PageOutcome, crawl_page
from crawler.fetch import PageErrorCode
from crawler.frontier import Scope, normalize_url
from crawler.render import Renderer
from crawler.robots import RobotsCache, sitemap_urls
from crawler.runtime import CrawlRuntime
from crawler.safety import AllowList, check_url
from crawler.schemas import CrawlRequest
from store import jobs as job_store
from store.db import session_scope

log = logging.getLogger(__name__)
Cancelled = Callable[[], bool]


@dataclass
class WorkerOptions:
    concurrency: int = 16
    per_host: int = 8
    stale_after_s: float = 300.0
    idle_poll_s: float = 0.2
    worker_id: str = "main"
    #: Finished pages are recorded together: this many, or after this long, or when no other
    #: page is in flight (so the first page is available at once).
    record_batch: int = 8
    record_every_s: float = 0.25


def make_scope(request: CrawlRequest) -> Scope:
    return Scope.for_url(
        request.start_url,
        allow_subdomains=request.allow_subdomains,
        include_paths=request.include_paths,
        exclude_paths=request.exclude_paths,
        max_depth=request.max_depth,
    )


def _norm(request: CrawlRequest, url: str) -> str:
    return normalize_url(url, ignore_query_params=request.ignore_query_params)


# --- submission ----------------------------------------------------------------------------


def check_submission(input: Mapping[str, Any]) -> None:
    """422 ``unsafe_url`` for a start URL that points at a private address (once per origin).

    Declared as the ``crawl`` and ``map`` kinds' check (``config.queues.KINDS``), so every
    creation path runs it; a name that does not resolve yet passes (each fetch checks again).
    """
    allowed = AllowList.parse(get_settings().crawl_allowed_hosts)
    urls = [input["url"]] if input.get("url") else list(input.get("urls") or [])
    seen: set[str] = set()
    for url in urls:
        origin = re.sub(r"^(https?://[^/?#]+).*$", r"\1", url, flags=re.IGNORECASE).lower()
        if origin not in seen:
            seen.add(origin)
            check_url(url, allowed, unresolvable_ok=True)


# --- seeding -----------------------------------------------------------------------------


async def seed(job_id: str, request: CrawlRequest, runtime: CrawlRuntime) -> int:
    """Put the crawl's start URL(s) in the frontier (idempotent: safe on redelivery)."""
    urls = request.urls if request.mode == "select" else [request.start_url]
    return await asyncio.to_thread(_seed_rows, job_id, [(_norm(request, u), 0) for u in urls])


async def seed_sitemap(job_id: str, request: CrawlRequest, runtime: CrawlRuntime) -> int:
    """Add the site's sitemap URLs (full crawls), while the start page is already crawling."""
    if request.mode != "full" or not request.use_sitemap:
        return 0
    scope = make_scope(request)
    robots = RobotsCache(runtime.fetcher, headers=request.headers or None)
    limit = min(max(request.max_pages * 2, 100), 50_000)
    found = await sitemap_urls(runtime.fetcher, request.start_url, robots, limit)
    items = [(_norm(request, u), 1) for u in found]
    return await asyncio.to_thread(_seed_rows, job_id, [i for i in items if scope.allows(*i)])


def _seed_rows(job_id: str, items: list[tuple[str, int]]) -> int:
    with session_scope() as session:
        if repo.lock_job(session, job_id) is None:
            return 0
        added = repo.insert_urls(session, job_id, items)
        total = sum(repo.counts(session, job_id).values())
        job_store.set_progress(
            session,
            job_id,
            {"pages_discovered": total, "pages_crawled": _crawled(session, job_id)},
        )
    return added


def _crawled(session: Session, job_id: str) -> int:
    return repo.counts(session, job_id).get(repo.CRAWLED, 0)


# --- recording ---------------------------------------------------------------------------


@dataclass
class Finished:
    page: repo.Claimed
    outcome: PageOutcome


#: A worker remembers at most this many URLs it knows are in the frontier (then starts over).
KNOWN_URLS_MAX = 200_000


@dataclass
class LinkFilter:
    """One worker's view of a crawl's links: normalised, in scope, not already known.

    Every page repeats most of its site's links (menus, footers); each raw link is normalised
    once, and a URL this worker already put in the frontier (or found there) is not sent to
    the store again. Only a shortcut: the store's unique key still decides what is new.
    """

    request: CrawlRequest
    scope: Scope
    known: set[str] = field(default_factory=set)
    _normal: dict[str, str] = field(default_factory=dict)

    def new_links(self, links: list[str], depth: int) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        for link in links:
            url = self._normal.get(link)
            if url is None:
                if len(self._normal) >= KNOWN_URLS_MAX:
                    self._normal.clear()
                url = self._normal[link] = _norm(self.request, link)
            if url not in self.known and self.scope.allows(url, depth):
                found.append((url, depth))
        return found

    def remember(self, items: list[tuple[str, int]]) -> None:
        if len(self.known) + len(items) > KNOWN_URLS_MAX:
            self.known.clear()
        self.known.update(url for url, _ in items)


def _finish(page: repo.Claimed, out: PageOutcome, status: str, size: int = 0) -> repo.Finish:
    return repo.Finish(
        page.id,
        status,
        reason=out.reason or None,
        message=out.message or None,
        status_code=out.status_code,
        final_url=out.final_url or None,
        content_hash=out.content_hash or None if status == repo.CRAWLED else None,
        size=size,
    )


def record(
    job_id: str,
    request: CrawlRequest,
    scope: Scope,
    batch: list[Finished],
    links: LinkFilter | None = None,
) -> None:
    """Store a batch of outcomes in one transaction, with exact counters: a handful of
    statements for the whole batch (duplicate check, page updates, result rows, new links)."""
    follow = request.mode == "full"
    links = links or LinkFilter(request, scope)
    with session_scope() as session:
        if repo.lock_job(session, job_id) is None:
            return  # cancelled (or ended) meanwhile: pages finished after that are discarded
        deltas = {"pages_crawled": 0, "pages_failed": 0, "pages_skipped": 0, "pages_discovered": 0}
        seen = repo.contents_seen(
            session, job_id, (d.outcome.content_hash for d in batch if d.outcome.record)
        )
        finished: list[repo.Finish] = []
        results: list[dict[str, Any]] = []
        found: list[tuple[str, int]] = []
        for done in batch:
            out, page = done.outcome, done.page
            if out.status == "crawled" and out.content_hash in seen:
                out.status, out.reason = "skipped", PageErrorCode.DUPLICATE_CONTENT.value
                out.message = "Same content as a page already crawled."
            if out.status == "crawled" and out.record is not None:
                seen.add(out.content_hash)  # a twin later in this batch is a duplicate too
                finished.append(_finish(page, out, repo.CRAWLED, len(out.record.markdown)))
                results.append(
                    {
                        "job_id": job_id,
                        "seq": page.id,
                        "name": page.url[:2048],
                        "content_type": "application/json",
                        "data": out.record.public(),
                    }
                )
                deltas["pages_crawled"] += 1
                if out.record.rendered:  # billed apart (billing.metering: pages_crawled)
                    deltas["pages_rendered"] = deltas.get("pages_rendered", 0) + 1
                if follow:
                    found += links.new_links(out.links, page.depth + 1)
            else:
                status = repo.SKIPPED if out.status == "skipped" else repo.FAILED
                finished.append(_finish(page, out, status))
                deltas["pages_failed" if status == repo.FAILED else "pages_skipped"] += 1
        repo.finish_pages(session, finished)
        repo.add_results(session, results)
        deltas["pages_discovered"] += repo.insert_urls(session, job_id, found)
        job_store.increment_progress(session, job_id, deltas)
    links.remember(found)


# --- one worker's loop ---------------------------------------------------------------------


@dataclass
class _Politeness:
    """Per-host concurrency cap and crawl-delay, within this worker."""

    per_host: int
    semaphores: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    next_slot: dict[str, float] = field(default_factory=dict)

    async def wait(self, host: str, delay: float) -> asyncio.Semaphore:
        sem = self.semaphores.setdefault(host, asyncio.Semaphore(1 if delay else self.per_host))
        await sem.acquire()
        if delay:
            now = time.monotonic()
            slot = max(now, self.next_slot.get(host, 0.0))
            self.next_slot[host] = slot + delay
            await asyncio.sleep(slot - now)
        return sem


def _claim(job_id: str, limit: int, max_pages: int, worker: str) -> list[repo.Claimed]:
    with session_scope() as session:
        return repo.claim(session, job_id, limit=limit, max_pages=max_pages, worker=worker)


def _idle_state(job_id: str, max_pages: int, stale_after_s: float) -> bool:
    """True when the crawl is finished: nothing claimed, and nothing queued or no budget."""
    with session_scope() as session:
        repo.release_stale(session, job_id, utcnow() - timedelta(seconds=stale_after_s))
        counts = repo.counts(session, job_id)
    if counts.get(repo.CLAIMED, 0):
        return False
    return not counts.get(repo.QUEUED, 0) or counts.get(repo.CRAWLED, 0) >= max_pages


def empty_result_error(job_id: str) -> tuple[str, str] | None:
    """When a finished crawl has no page at all: the code and message to fail the job with
    (an empty result is never reported as a success)."""
    with session_scope() as session:
        if repo.counts(session, job_id).get(repo.CRAWLED, 0):
            return None
        problems = repo.list_problems(session, job_id, after_id=0, limit=1)
    if not problems:
        return "no_pages", "The crawl found no page to crawl."
    first = problems[0]
    detail = f" (HTTP {first.status_code})" if first.status_code else ""
    reason = first.reason or "crawl_failed"
    return reason, f"No page could be crawled: {first.url} failed with {reason}{detail}: " + (
        first.message or ""
    )


def _release(job_id: str, worker: str) -> None:
    with session_scope() as session:
        repo.release_worker(session, job_id, worker)


async def run_worker(
    job_id: str,
    request: CrawlRequest,
    runtime: CrawlRuntime,
    *,
    cancelled: Cancelled,
    options: WorkerOptions | None = None,
    background: Coroutine[Any, Any, object] | None = None,
) -> None:
    """Crawl this job's frontier until it is exhausted (or the job is cancelled).

    ``background`` (the sitemap seeding) runs alongside; the crawl is not over before it is.
    """
    opts = options or WorkerOptions()
    scope = make_scope(request)
    robots = RobotsCache(runtime.fetcher, headers=request.headers or None)
    polite = _Politeness(opts.per_host)
    budget = request.page_budget
    renderer: Callable[[], Awaitable[Renderer]] = runtime.renderer
    in_flight: dict[asyncio.Task[PageOutcome], repo.Claimed] = {}
    extra = asyncio.create_task(background) if background is not None else None

    async def crawl_one(page: repo.Claimed) -> PageOutcome:
        host = urlsplit(page.url).netloc
        delay = runtime.config.per_host_delay_s
        if request.respect_robots:
            delay = max(delay, await robots.crawl_delay(page.url))
        sem = await polite.wait(host, delay)
        try:
            return await crawl_page(
                page.url, request, fetcher=runtime.fetcher, renderer=renderer,
                robots=robots, depth=page.depth, session_key=job_id,
                executor=runtime.converter,
            )  # fmt: skip
        finally:
            sem.release()

    links = LinkFilter(request, scope)
    pending: list[Finished] = []  # finished pages not yet recorded (still claimed)
    recorded_at = 0.0  # never: the first page is recorded as soon as it is done
    claim_at = max(1, opts.concurrency // 4)  # claim in batches, not one URL per page done
    try:
        while True:
            if await asyncio.to_thread(cancelled):
                break
            free = opts.concurrency - len(in_flight)
            if free >= claim_at or (free > 0 and not in_flight):
                claimed = await asyncio.to_thread(_claim, job_id, free, budget, opts.worker_id)
                for page in claimed:
                    in_flight[asyncio.create_task(crawl_one(page))] = page
            if not in_flight and not pending:
                settled = extra is None or extra.done()
                if extra is not None and extra.done():
                    extra.result()  # surface a failure of the background work
                if settled and await asyncio.to_thread(
                    _idle_state, job_id, budget, opts.stale_after_s
                ):
                    break
                await asyncio.sleep(opts.idle_poll_s)
                continue
            if in_flight:
                done, _ = await asyncio.wait(
                    in_flight, timeout=opts.record_every_s, return_when=asyncio.FIRST_COMPLETED
                )
                pending += [Finished(in_flight.pop(task), task.result()) for task in done]
            # One transaction per batch of pages: a few statements, whatever the batch's size.
            if pending and (
                not in_flight
                or len(pending) >= opts.record_batch
                or time.monotonic() - recorded_at >= opts.record_every_s
            ):
                batch, pending = pending, []
                await asyncio.to_thread(record, job_id, request, scope, batch, links)
                recorded_at = time.monotonic()
    finally:
        if extra is not None and not extra.done():
            extra.cancel()
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
        await asyncio.to_thread(_release, job_id, opts.worker_id)
        await runtime.end_session(job_id)
