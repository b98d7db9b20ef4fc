"""Fetching pages with one async httpx client (HTTP/2, pooled) per worker process.

Redirects are followed by hand so that every hop passes the SSRF guard; the transport checks
the resolved address again when it opens a connection (so DNS rebinding cannot slip through).
Retries with exponential backoff on 429/5xx and connection errors honour ``Retry-After``.
Bodies are read as a stream and cut at ``max_body_bytes`` (decoded bytes, so compression bombs
stop there too). Non-text content is not downloaded: the page is recorded as skipped.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from common.errors import ErrorCode
from crawler.config import CrawlConfig
from crawler.safety import (
    AllowList,
    DNSError,
    UnsafeURLError,
    check_url_async,
    resolve_checked,
)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
TEXT_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "text/plain",
        "text/xml",
        "application/xml",
        "application/json",
        "text/markdown",
    }
)
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Headers a user may not set: the transport owns them.
FORBIDDEN_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "keep-alive"}
)
CREDENTIAL_HEADERS = frozenset({"cookie", "authorization", "proxy-authorization"})


class PageErrorCode(StrEnum):
    """Why a page produced no content (the ``reason`` listed by ``/errors``); a crawl with no
    page fails with its first page's reason, so these are ``ErrorCode`` values."""

    HTTP_ERROR = ErrorCode.HTTP_ERROR.value
    TOO_LARGE = ErrorCode.TOO_LARGE.value
    UNSAFE_URL = ErrorCode.UNSAFE_URL.value
    DNS_ERROR = ErrorCode.DNS_ERROR.value
    REDIRECT_LOOP = ErrorCode.REDIRECT_LOOP.value
    TOO_MANY_REDIRECTS = ErrorCode.TOO_MANY_REDIRECTS.value
    TIMEOUT = ErrorCode.TIMEOUT.value
    CONNECTION_ERROR = ErrorCode.CONNECTION_ERROR.value
    UNSUPPORTED_CONTENT_TYPE = ErrorCode.UNSUPPORTED_CONTENT_TYPE.value
    ROBOTS_BLOCKED = ErrorCode.ROBOTS_BLOCKED.value
    RENDER_FAILED = ErrorCode.RENDER_FAILED.value
    DUPLICATE_CONTENT = ErrorCode.DUPLICATE_CONTENT.value
    OUT_OF_SCOPE = ErrorCode.OUT_OF_SCOPE.value
    CRAWL_FAILED = ErrorCode.CRAWL_FAILED.value  # e.g. its conversion process died


# Codes that mean "not crawled on purpose" rather than "failed".
SKIP_CODES = frozenset(
    {
        PageErrorCode.UNSUPPORTED_CONTENT_TYPE,
        PageErrorCode.ROBOTS_BLOCKED,
        PageErrorCode.DUPLICATE_CONTENT,
        PageErrorCode.OUT_OF_SCOPE,
    }
)


@dataclass
class FetchResult:
    """What one fetch produced: a body, or an error code with a message."""

    url: str
    final_url: str
    status_code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = ""
    charset: str | None = None
    body: bytes = b""
    redirects: list[str] = field(default_factory=list)
    error: PageErrorCode | None = None
    message: str = ""
    elapsed_s: float = 0.0
    fetched_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def is_html(self) -> bool:
        return self.content_type in HTML_TYPES

    def text(self) -> str:
        return self.body.decode(self.charset or "utf-8", errors="replace")


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks every address with the SSRF guard, then connects to a checked address."""

    def __init__(self, allowed: AllowList) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allowed = allowed

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve_checked(host, port, self._allowed)
        last: Exception | None = None
        for address in dict.fromkeys(addresses):
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeURLError("Unix sockets are not allowed.")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with the SSRF guard at connect time."""

    def __init__(self, allowed: AllowList, *, http2: bool = True, max_connections: int = 64):
        super().__init__(http2=http2)
        # Replace the default pool by one whose network backend is guarded (same options).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
            http1=True,
            http2=http2,
            network_backend=_GuardedBackend(allowed),
        )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def clean_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """User headers without the ones the transport owns (``Host`` and hop-by-hop)."""
    return {k: v for k, v in (headers or {}).items() if k.lower() not in FORBIDDEN_HEADERS}


def _mime(content_type: str) -> tuple[str, str | None]:
    mime, _, params = content_type.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, val = param.strip().partition("=")
        if key.lower() == "charset" and val:
            charset = val.strip("\"' ").lower()
    return mime.strip().lower(), charset


def _sniff(prefix: bytes) -> str:
    head = prefix[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "text/html"
    if head.startswith(b"%pdf"):
        return "application/pdf"
    return "application/octet-stream"


class Fetcher:
    """One per worker process: ``await fetcher.fetch(url)``; ``await fetcher.aclose()`` at exit."""

    def __init__(
        self,
        config: CrawlConfig | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config or CrawlConfig()
        self.allowed = AllowList.parse(self.config.allowed_hosts)
        self.client = httpx.AsyncClient(
            transport=transport
            or GuardedTransport(self.allowed, max_connections=self.config.max_connections),
            timeout=httpx.Timeout(
                self.config.read_timeout_s, connect=self.config.connect_timeout_s
            ),
            follow_redirects=False,
            headers={
                "User-Agent": self.config.user_agent,
                "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            },
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def fetch(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        accept: frozenset[str] = TEXT_TYPES,
    ) -> FetchResult:
        """Fetch ``url`` following redirects; never raises for page-level problems."""
        result = FetchResult(url=url, final_url=url)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                await self._fetch(result, clean_headers(headers), accept)
        except TimeoutError:
            result.error, result.message = PageErrorCode.TIMEOUT, "The page took too long."
        except DNSError as exc:
            result.error, result.message = PageErrorCode.DNS_ERROR, exc.message
        except UnsafeURLError as exc:
            result.error, result.message = PageErrorCode.UNSAFE_URL, exc.message
        except httpx.TimeoutException as exc:
            result.error, result.message = PageErrorCode.TIMEOUT, f"Timed out: {exc!r}"
        except (httpx.TransportError, httpx.DecodingError) as exc:
            result.error, result.message = PageErrorCode.CONNECTION_ERROR, f"{type(exc).__name__}"
        result.elapsed_s = time.monotonic() - started
        return result

    async def _fetch(
        self, result: FetchResult, headers: dict[str, str], accept: frozenset[str]
    ) -> None:
        origin = urlsplit(result.url).netloc.lower()
        current = result.url
        visited = {current}
        for _hop in range(self.config.max_redirects + 1):
            await check_url_async(current, self.allowed)
            same_origin = urlsplit(current).netloc.lower() == origin
            hop_headers = (
                headers
                if same_origin
                else {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
            )
            response = await self._send(current, hop_headers)
            result.final_url = current
            result.status_code = response.status_code
            location = response.headers.get("location")
            if response.status_code in REDIRECT_STATUSES and location:
                await response.aclose()
                nxt = urljoin(current, location.strip())
                if nxt in visited:
                    result.error = PageErrorCode.REDIRECT_LOOP
                    result.message = f"Redirect loop at {nxt}"
                    return
                visited.add(nxt)
                result.redirects.append(nxt)
                current = nxt
                continue
            await self._read(result, response, accept)
            return
        result.error = PageErrorCode.TOO_MANY_REDIRECTS
        result.message = f"More than {self.config.max_redirects} redirects."

    async def _send(self, url: str, headers: dict[str, str]) -> httpx.Response:
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            last = attempt == cfg.max_retries
            try:
                request = self.client.build_request("GET", url, headers=headers)
                response = await self.client.send(request, stream=True)
            except (
                httpx.ConnectError,
                httpx.ReadError,
                httpx.RemoteProtocolError,
                httpx.ConnectTimeout,
            ):
                if last:
                    raise
                await asyncio.sleep(cfg.retry_backoff_s * 2**attempt)
                continue
            if response.status_code not in RETRY_STATUSES or last:
                return response
            delay = parse_retry_after(response.headers.get("retry-after"))
            if delay is None:
                delay = cfg.retry_backoff_s * 2**attempt
            if delay > cfg.max_retry_after_s:
                return response  # the server asks for longer than we wait: record its answer
            await response.aclose()
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _read(
        self, result: FetchResult, response: httpx.Response, accept: frozenset[str]
    ) -> None:
        limit = self.config.max_body_bytes
        try:
            result.headers = {k.lower(): v for k, v in response.headers.items()}
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                result.error = PageErrorCode.TOO_LARGE
                result.message = f"Body of {declared} bytes is over the {limit}-byte limit."
                return
            mime, charset = _mime(response.headers.get("content-type", ""))
            result.charset = charset
            buffer = bytearray()
            async for chunk in response.aiter_bytes():
                buffer += chunk
                if not mime:
                    mime = _sniff(bytes(buffer))
                if mime not in accept:
                    break
                if len(buffer) > limit:
                    result.error = PageErrorCode.TOO_LARGE
                    result.message = f"Body is over the {limit}-byte limit."
                    return
            result.content_type = mime or "text/html"
            if result.content_type not in accept:
                result.error = PageErrorCode.UNSUPPORTED_CONTENT_TYPE
                result.message = f"Content type {result.content_type} is not converted."
                return
            result.body = bytes(buffer)
            if response.status_code >= 400:
                result.error = PageErrorCode.HTTP_ERROR
                result.message = f"HTTP {response.status_code}"
        finally:
            await response.aclose()
