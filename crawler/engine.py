"""Crawling one page: robots check, fetch, render when needed, convert — the engine waterfall.

:func:`crawl_page` never raises for a page-level problem: it returns a :class:`PageOutcome`
that says whether the page was crawled, failed (with a reason) or skipped (robots, binary
content). The crawl service decides what to do with it (store it, count it, follow its links).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from common.timeutil import isoformat_z
from crawler.convert import Document, convert
from crawler.fetch import SKIP_CODES, Fetcher, FetchResult, PageErrorCode
from crawler.render import Renderer
from crawler.robots import RobotsCache
from crawler.schemas import CrawlRequest, PageRecord

Status = Literal["crawled", "failed", "skipped"]


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


@dataclass
class PageResources:
    """What a worker process lends a crawl: the HTTP client, the browser, robots, an executor."""

    fetcher: Fetcher
    renderer_factory: Callable[[], asyncio.Future[Renderer]] | None = None
    executor: Executor | None = None


def _failed(url: str, code: PageErrorCode | str, message: str, **kw: object) -> PageOutcome:
    status: Status = "skipped" if code in SKIP_CODES else "failed"
    return PageOutcome(url=url, status=status, reason=str(code), message=message, **kw)  # type: ignore[arg-type]


async def _convert(
    request: CrawlRequest, html: str | bytes, base_url: str, charset: str | None,
    executor: Executor | None,
) -> Document:  # fmt: skip
    job = partial(
        convert,
        html,
        base_url,
        charset=charset,
        only_main_content=request.only_main_content,
        include_tags=tuple(request.include_tags),
        exclude_tags=tuple(request.exclude_tags),
        want_html=request.wants("html"),
        want_text=request.wants("text"),
    )
    return await asyncio.get_running_loop().run_in_executor(executor, job)


async def crawl_page(
    url: str,
    request: CrawlRequest,
    *,
    fetcher: Fetcher,
    renderer: Callable[[], asyncio.Future[Renderer]] | Callable[[], object] | None,
    robots: RobotsCache | None,
    depth: int = 0,
    executor: Executor | None = None,
    session_key: str = "",
) -> PageOutcome:
    """Fetch (and render when needed) one URL and convert it."""
    if robots is not None and request.respect_robots and not await robots.allowed(url):
        return _failed(url, PageErrorCode.ROBOTS_BLOCKED, "Disallowed by robots.txt.")
    headers = request.headers or None
    timeout_s = request.timeout_ms / 1000
    screenshot = request.wants("screenshot")
    fetched: FetchResult | None = None
    doc: Document | None = None
    if request.render != "always" and not screenshot:
        fetched = await fetcher.fetch(url, headers=headers, timeout_s=timeout_s)
        if fetched.error is not None and fetched.error != PageErrorCode.HTTP_ERROR:
            return _failed(
                url, fetched.error, fetched.message,
                final_url=fetched.final_url, status_code=fetched.status_code,
            )  # fmt: skip
        if fetched.error == PageErrorCode.HTTP_ERROR:
            return _failed(
                url, fetched.error, fetched.message,
                final_url=fetched.final_url, status_code=fetched.status_code,
            )  # fmt: skip
        if fetched.is_html or fetched.content_type == "text/plain":
            body: bytes | str = fetched.body
            if not fetched.is_html:
                body = (
                    "<pre>" + fetched.text().replace("&", "&amp;").replace("<", "&lt;") + "</pre>"
                )
            doc = await _convert(request, body, fetched.final_url, fetched.charset, executor)
        else:
            return _failed(
                url, PageErrorCode.UNSUPPORTED_CONTENT_TYPE,
                f"Content type {fetched.content_type} is not converted.",
                final_url=fetched.final_url, status_code=fetched.status_code,
            )  # fmt: skip
    must_render = (
        request.render == "always"
        or screenshot
        or (request.render == "auto" and doc is not None and doc.needs_render)
    )
    rendered = False
    shot: bytes | None = None
    final_url = fetched.final_url if fetched else url
    status_code = fetched.status_code if fetched else None
    fetched_at = fetched.fetched_at if fetched else None
    if must_render and renderer is not None:
        browser = await renderer()  # type: ignore[misc]
        assert isinstance(browser, Renderer)
        result = await browser.render(
            url,
            timeout_ms=request.timeout_ms,
            wait_for_ms=request.wait_for_ms,
            screenshot=screenshot,
            headers=headers,
            session_key=session_key,
        )
        if not result.ok:
            return _failed(
                url, result.error or PageErrorCode.RENDER_FAILED, result.message,
                final_url=result.final_url, status_code=result.status_code,
            )  # fmt: skip
        doc = await _convert(request, result.html, result.final_url, None, executor)
        rendered, shot = True, result.screenshot
        final_url, status_code, fetched_at = result.final_url, result.status_code, result.fetched_at
    if doc is None:
        return _failed(url, PageErrorCode.RENDER_FAILED, "The page needs a browser to render.")
    record = PageRecord(
        url=url,
        final_url=final_url,
        status_code=status_code,
        title=doc.title,
        description=doc.description,
        language=doc.language,
        markdown=doc.markdown,
        html=doc.html if request.wants("html") else None,
        text=doc.text if request.wants("text") else None,
        links=doc.links,
        screenshot=base64.b64encode(shot).decode() if shot else None,
        fetched_at=isoformat_z(fetched_at) or "",
        rendered=rendered,
        depth=depth,
    )
    return PageOutcome(
        url=url,
        status="crawled",
        final_url=final_url,
        status_code=status_code,
        record=record,
        links=doc.links,
        content_hash=doc.content_hash,
    )
