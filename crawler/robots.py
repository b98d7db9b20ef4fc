"""robots.txt (via protego) and sitemap seeding (sitemap indexes and gzip included)."""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import lxml.etree
from protego import Protego

from crawler.config import ROBOTS_AGENT
from crawler.fetch import Fetcher

SITEMAP_TYPES = frozenset(
    {
        "application/xml",
        "text/xml",
        "text/plain",
        "application/gzip",
        "application/x-gzip",
        "application/octet-stream",
        "text/html",
    }
)
MAX_SITEMAPS = 50
_XML_PARSER = lxml.etree.XMLParser(resolve_entities=False, no_network=True, recover=True)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class RobotsCache:
    """One robots.txt per origin, fetched once per crawl. Missing or failing robots → allow."""

    fetcher: Fetcher
    agent: str = ROBOTS_AGENT
    headers: Mapping[str, str] | None = None
    _rules: dict[str, Protego | None] = field(default_factory=dict)

    async def rules(self, url: str) -> Protego | None:
        origin = origin_of(url)
        if origin not in self._rules:
            result = await self.fetcher.fetch(f"{origin}/robots.txt", headers=self.headers)
            ok = result.ok and result.status_code == 200
            self._rules[origin] = Protego.parse(result.text()) if ok else None
        return self._rules[origin]

    async def allowed(self, url: str) -> bool:
        rules = await self.rules(url)
        return rules is None or bool(rules.can_fetch(url, self.agent))

    async def crawl_delay(self, url: str) -> float:
        rules = await self.rules(url)
        delay = rules.crawl_delay(self.agent) if rules is not None else None
        return float(delay or 0.0)

    async def sitemaps(self, url: str) -> list[str]:
        rules = await self.rules(url)
        return list(rules.sitemaps) if rules is not None else []


def parse_sitemap(body: bytes) -> tuple[list[str], list[str]]:
    """Return (page URLs, child sitemap URLs) of a sitemap or sitemap index."""
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    try:
        root = lxml.etree.fromstring(body, parser=_XML_PARSER)
    except lxml.etree.XMLSyntaxError:
        return [], []
    if root is None:
        return [], []
    locs = [
        (el.text or "").strip()
        for el in root.iter("{*}loc")
        if el.text and el.text.strip().startswith(("http://", "https://"))
    ]
    if lxml.etree.QName(root).localname == "sitemapindex":
        return [], locs
    return locs, []


async def sitemap_urls(
    fetcher: Fetcher, start_url: str, robots: RobotsCache | None, limit: int
) -> list[str]:
    """Page URLs listed by the site's sitemaps (from robots.txt, else /sitemap.xml)."""
    queue = await robots.sitemaps(start_url) if robots is not None else []
    if not queue:
        queue = [urljoin(origin_of(start_url), "/sitemap.xml")]
    seen: set[str] = set()
    pages: list[str] = []
    while queue and len(seen) < MAX_SITEMAPS and len(pages) < limit:
        sitemap = queue.pop(0)
        if sitemap in seen:
            continue
        seen.add(sitemap)
        result = await fetcher.fetch(sitemap, accept=SITEMAP_TYPES)
        if not result.ok:
            continue
        found, children = parse_sitemap(result.body)
        pages.extend(found)
        queue.extend(children)
    return pages[:limit]
