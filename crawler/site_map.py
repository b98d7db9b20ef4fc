"""Mapping a site: its URLs from the sitemaps and from the links of a few of its pages, fast
(pages are parsed for links only, never converted). Capped by the request's ``limit``, a page
budget and a time budget; every fetch goes through the runtime's guarded fetcher."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from crawler.convert import extract_links, parse_html
from crawler.frontier import Scope, normalize_url
from crawler.robots import RobotsCache, sitemap_urls
from crawler.runtime import CrawlRuntime
from crawler.schemas import MapRequest

#: Pages fetched for their links (breadth first from the start URL), and how many at once.
MAP_PAGE_BUDGET = 50
MAP_CONCURRENCY = 8


async def map_site(
    request: MapRequest, runtime: CrawlRuntime, cancelled: Callable[[], bool]
) -> list[str]:
    """The site's URLs in discovery order (start URL first), at most ``request.limit``."""
    deadline = time.monotonic() + request.timeout_ms / 1000
    scope = Scope.for_url(request.url, allow_subdomains=request.include_subdomains)
    robots = RobotsCache(runtime.fetcher)
    found: dict[str, None] = {}

    def add(url: str) -> None:
        if len(found) < request.limit * 4:  # room for what ``search`` filters out
            found.setdefault(normalize_url(url, ignore_query_params=request.ignore_query_params))

    add(request.url)
    if request.use_sitemap:
        for url in await sitemap_urls(runtime.fetcher, request.url, robots, request.limit * 2):
            if scope.allows(url, 1):
                add(url)
    queue, fetched = [request.url], 0
    while queue and fetched < MAP_PAGE_BUDGET and not cancelled():
        left = deadline - time.monotonic()
        if left <= 0 or len(found) >= request.limit * 4:
            break
        batch, queue = queue[:MAP_CONCURRENCY], queue[MAP_CONCURRENCY:]
        batch = [url for url in batch if await robots.allowed(url)]
        fetched += len(batch)
        results = await asyncio.gather(
            *(runtime.fetcher.fetch(url, timeout_s=min(left, 15.0)) for url in batch)
        )
        for result in results:
            if not result.ok or not result.is_html:
                continue
            doc = parse_html(result.body, result.charset)
            doc.make_links_absolute(
                result.final_url, resolve_base_href=True, handle_failures="discard"
            )
            for link in extract_links(doc):
                if scope.allows(link, 1):
                    known = len(found)
                    add(link)
                    if len(found) > known:
                        queue.append(link)
    links = list(found)
    if request.search:
        needle = request.search.lower()
        links = [url for url in links if needle in url.lower()]
    return links[: request.limit]
