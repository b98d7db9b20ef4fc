"""The crawl frontier: URL normalisation, scope, de-duplication, depth and an exact page budget.

:class:`Frontier` is the in-process implementation used by one crawl task; the same
``claim``/``complete`` protocol (:class:`FrontierProtocol`) lets a store-backed frontier share
one crawl between several workers. ``max_pages`` caps the pages *crawled*: a URL is handed out
only while ``crawled + in_flight < max_pages``, so the figure is exact under concurrency.
"""

from __future__ import annotations

import posixpath
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
TRACKING_PARAMS = re.compile(r"^(utm_\w+|fbclid|gclid|dclid|msclkid|mc_cid|mc_eid|_ga)$")
_SAFE_PATH = "/:@!$&'()*+,;=-._~%"


def normalize_url(url: str, *, ignore_query_params: bool = False) -> str:
    """Canonical form: lower-case scheme/host, no default port, no fragment, resolved dot
    segments, no trailing slash (except the root), sorted query without tracking parameters."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None or DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    path = posixpath.normpath(unquote(parts.path)) if parts.path else "/"
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if path == ".":
        path = "/"
    path = quote(path, safe=_SAFE_PATH)
    if len(path) > 1:
        path = path.rstrip("/")
    query = ""
    if not ignore_query_params and parts.query:
        pairs = [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not TRACKING_PARAMS.match(k)
        ]
        query = urlencode(sorted(pairs))
    return urlunsplit((scheme, netloc, path, query, ""))


def _registrable_match(host: str, root: str) -> bool:
    return host == root or host.endswith("." + root)


@dataclass(frozen=True)
class Scope:
    """Which URLs belong to the crawl."""

    root_host: str
    allow_subdomains: bool = False
    include: tuple[re.Pattern[str], ...] = ()
    exclude: tuple[re.Pattern[str], ...] = ()
    max_depth: int | None = None

    @classmethod
    def for_url(
        cls,
        url: str,
        *,
        allow_subdomains: bool = False,
        include_paths: Sequence[str] = (),
        exclude_paths: Sequence[str] = (),
        max_depth: int | None = None,
    ) -> Scope:
        host = (urlsplit(url).hostname or "").lower()
        if allow_subdomains and host.startswith("www."):
            host = host[4:]
        return cls(
            root_host=host,
            allow_subdomains=allow_subdomains,
            include=tuple(re.compile(p) for p in include_paths),
            exclude=tuple(re.compile(p) for p in exclude_paths),
            max_depth=max_depth,
        )

    def host_allowed(self, host: str) -> bool:
        host = host.lower()
        if self.allow_subdomains:
            return _registrable_match(host, self.root_host)
        return (
            host == self.root_host
            or host == f"www.{self.root_host}"
            or (self.root_host == f"www.{host}")
        )

    def allows(self, url: str, depth: int) -> bool:
        """Whether a discovered URL (not the start URL) is crawled."""
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not self.host_allowed(parts.hostname or ""):
            return False
        if self.max_depth is not None and depth > self.max_depth:
            return False
        path = parts.path or "/"
        if self.include and not any(p.search(path) for p in self.include):
            return False
        return not any(p.search(path) for p in self.exclude)


@dataclass(frozen=True)
class CrawlItem:
    """One URL to crawl and how far from the start it was found."""

    url: str
    depth: int


class FrontierProtocol(Protocol):
    async def claim(self, limit: int) -> list[CrawlItem]: ...

    async def complete(
        self, item: CrawlItem, *, crawled: bool, discovered: Iterable[str]
    ) -> None: ...

    async def is_duplicate(self, key: str) -> bool: ...

    def finished(self) -> bool: ...


@dataclass
class Frontier:
    """In-memory frontier for one crawl task (asyncio: one thread, no locks needed)."""

    scope: Scope
    max_pages: int
    ignore_query_params: bool = False
    discovered: int = 0
    crawled: int = 0
    in_flight: int = 0
    _seen: set[str] = field(default_factory=set)
    _queue: deque[CrawlItem] = field(default_factory=deque)
    _content: set[str] = field(default_factory=set)

    def normalize(self, url: str) -> str:
        return normalize_url(url, ignore_query_params=self.ignore_query_params)

    def seed(self, urls: Iterable[str], depth: int = 0, *, check_scope: bool = False) -> int:
        """Add start URLs (the first one is never filtered by include/exclude)."""
        added = 0
        for url in urls:
            norm = self.normalize(url)
            if norm in self._seen or (check_scope and not self.scope.allows(norm, depth)):
                continue
            self._seen.add(norm)
            self._queue.append(CrawlItem(norm, depth))
            self.discovered += 1
            added += 1
        return added

    def add_links(self, links: Iterable[str], depth: int) -> int:
        added = 0
        for link in links:
            norm = self.normalize(link)
            if norm in self._seen or not self.scope.allows(norm, depth):
                continue
            self._seen.add(norm)
            self._queue.append(CrawlItem(norm, depth))
            self.discovered += 1
            added += 1
        return added

    def mark_seen(self, url: str) -> bool:
        """Record a URL reached another way (a redirect target); False if already known."""
        norm = self.normalize(url)
        if norm in self._seen:
            return False
        self._seen.add(norm)
        return True

    async def claim(self, limit: int) -> list[CrawlItem]:
        out: list[CrawlItem] = []
        while self._queue and len(out) < limit and self.crawled + self.in_flight < self.max_pages:
            out.append(self._queue.popleft())
            self.in_flight += 1
        return out

    async def complete(self, item: CrawlItem, *, crawled: bool, discovered: Iterable[str]) -> None:
        self.in_flight -= 1
        if crawled:
            self.crawled += 1
        self.add_links(discovered, item.depth + 1)

    async def is_duplicate(self, key: str) -> bool:
        if key in self._content:
            return True
        self._content.add(key)
        return False

    def finished(self) -> bool:
        if self.in_flight:
            return False
        return not self._queue or self.crawled >= self.max_pages

    @property
    def pending(self) -> int:
        return len(self._queue)
