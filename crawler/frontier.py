"""The crawl frontier's rules: URL normalisation (the de-duplication key) and scope
(hosts, include/exclude path regexes, depth). The frontier's state — which URLs are queued,
claimed or done, and the exact page budget — lives in the store (``crawler.repository``), so
several workers can share one crawl.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
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
