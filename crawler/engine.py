"""Crawling one page: robots check, fetch, render when needed, convert — the engine waterfall.

:func:`crawl_page` never raises for a page-level problem: it returns a :class:`PageOutcome`
that says whether the page was crawled, failed (with a reason) or skipped (robots, binary
content). The crawl service decides what to do with it (store it, count it, follow its links).
"""

from __future__ import annotations

import asyncio
import base64
import html as html_lib
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Literal

from common.timeutil import isoformat_z
from crawler.convert import Document, convert
from crawler.fetch import SKIP_CODES, Fetcher, PageErrorCode
from crawler.render import Renderer
from crawler.robots import RobotsCache
from crawler.schemas import CrawlRequest, PageMetadata, PageRecord

Status = Literal["crawled", "failed", "skipped"]
RendererFactory = Callable[[], Awaitable[Renderer]]


@dataclass
class PageOutcome:
    url: str
    status: Status
    final_url: str = ""
    status_code: int | None = None
    reason: str = ""
    message: str = ""
    record: PageRecord | None = None
    links: list[str] = field(default_factory=list)
    content_hash: str = ""


def _problem(
    url: str,
    code: PageErrorCode | str,
    message: str,
    final_url: str = "",
    status_code: int | None = None,
) -> PageOutcome:
    status: Status = "skipped" if code in SKIP_CODES else "failed"
    return PageOutcome(
        url=url,
        status=status,
        reason=str(code),
        message=message,
        final_url=final_url,
        status_code=status_code,
    )


def _unconverted(url: str, final_url: str, status_code: int | None) -> PageOutcome:
    message = "The process converting this page died twice."
    return _problem(url, PageErrorCode.CRAWL_FAILED, message, final_url, status_code)


async def _convert(
    request: CrawlRequest,
    markup: str | bytes,
    base_url: str,
    charset: str | None,
    executor: Executor | None,
) -> Document | None:
    job = partial(
        convert,
        markup,
        base_url,
        charset=charset,
        only_main_content=request.only_main_content,
        include_tags=tuple(request.include_tags),
        exclude_tags=tuple(request.exclude_tags),
        want_html=request.wants("html"),
        want_text=request.wants("text"),
    )
    # Off the event loop (in the conversion processes), so fetches keep flowing meanwhile.
    loop = asyncio.get_running_loop()
    for _attempt in range(2):
        try:
            return await loop.run_in_executor(executor, job)
        except BrokenProcessPool:
            continue  # its process died (killed, or crashed on this page): once more, anew
    return None


@dataclass
class _Page:
    """What the fetch or the browser produced, before conversion."""

    doc: Document
    final_url: str
    status_code: int | None
    fetched_at: datetime
    rendered: bool = False
    screenshot: bytes | None = None
    content_type: str = "text/html"


async def crawl_page(
    url: str,
    request: CrawlRequest,
    *,
    fetcher: Fetcher,
    renderer: RendererFactory | None,
    robots: RobotsCache | None,
    depth: int = 0,
    executor: Executor | None = None,
    session_key: str = "",
) -> PageOutcome:
    """Fetch (and render when needed) one URL and convert it."""
    if robots is not None and request.respect_robots and not await robots.allowed(url):
        return _problem(url, PageErrorCode.ROBOTS_BLOCKED, "Disallowed by robots.txt.")
    headers = request.headers or None
    screenshot = request.wants("screenshot")
    page: _Page | None = None
    if request.render != "always" and not screenshot:
        fetched = await fetcher.fetch(url, headers=headers, timeout_s=request.timeout_ms / 1000)
        if fetched.error is not None:
            return _problem(
                url, fetched.error, fetched.message, fetched.final_url, fetched.status_code
            )
        if not fetched.is_html and fetched.content_type != "text/plain":
            return _problem(
                url,
                PageErrorCode.UNSUPPORTED_CONTENT_TYPE,
                f"Content type {fetched.content_type} is not converted.",
                fetched.final_url,
                fetched.status_code,
            )
        body: str | bytes = fetched.body
        if not fetched.is_html:
            body = f"<pre>{html_lib.escape(fetched.text())}</pre>"
        doc = await _convert(request, body, fetched.final_url, fetched.charset, executor)
        if doc is None:
            return _unconverted(url, fetched.final_url, fetched.status_code)
        page = _Page(
            doc,
            fetched.final_url,
            fetched.status_code,
            fetched.fetched_at,
            content_type=fetched.content_type,
        )
    needs_browser = page is None or (request.render == "auto" and page.doc.needs_render)
    if needs_browser and request.render != "never" and renderer is not None:
        browser = await renderer()
        result = await browser.render(
            url,
            timeout_ms=request.timeout_ms,
            wait_for_ms=request.wait_for_ms,
            screenshot=screenshot,
            headers=headers,
            session_key=session_key,
        )
        if not result.ok:
            return _problem(
                url,
                result.error or PageErrorCode.RENDER_FAILED,
                result.message,
                result.final_url,
                result.status_code,
            )
        doc = await _convert(request, result.html, result.final_url, None, executor)
        if doc is None:
            return _unconverted(url, result.final_url, result.status_code)
        page = _Page(
            doc, result.final_url, result.status_code, result.fetched_at, True, result.screenshot
        )
    if page is None:
        return _problem(url, PageErrorCode.RENDER_FAILED, "The page needs a browser to render.")
    record = PageRecord(
        url=url,
        final_url=page.final_url,
        status_code=page.status_code,
        title=page.doc.title,
        description=page.doc.description,
        language=page.doc.language,
        markdown=page.doc.markdown,
        html=page.doc.html if request.wants("html") else None,
        text=page.doc.text if request.wants("text") else None,
        links=page.doc.links,
        screenshot=base64.b64encode(page.screenshot).decode() if page.screenshot else None,
        fetched_at=isoformat_z(page.fetched_at) or "",
        rendered=page.rendered,
        depth=depth,
        metadata=PageMetadata(
            title=page.doc.title,
            description=page.doc.description,
            language=page.doc.language,
            source_url=url,
            url=page.final_url,
            status_code=page.status_code,
            content_type=page.content_type,
        ),
    )
    return PageOutcome(
        url=url,
        status="crawled",
        final_url=page.final_url,
        status_code=page.status_code,
        record=record,
        links=page.doc.links,
        content_hash=page.doc.content_hash,
    )
