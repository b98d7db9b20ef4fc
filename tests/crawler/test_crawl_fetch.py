"""The fetcher against the generated site over real HTTP (and MockTransport for header edge
cases a local server cannot produce on demand)."""

from __future__ import annotations

import time

import httpx
import pytest

from crawler.config import CrawlConfig
from crawler.fetch import Fetcher, PageErrorCode, parse_retry_after
from crawler.runtime import CrawlRuntime
from tests.sites.site import GeneratedSite


def fetch(runtime: CrawlRuntime, url: str, **kw: object):  # type: ignore[no-untyped-def]
    return runtime.run(runtime.fetcher.fetch(url, **kw))  # type: ignore[arg-type]


def test_article_is_fetched_decoded(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    result = fetch(runtime, f"{site.base}/articles/7")
    assert result.ok and result.status_code == 200 and result.is_html
    assert b"Article 7:" in result.body and len(result.body) > 15_000


def test_redirect_chain_records_final_url(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    result = fetch(runtime, f"{site.base}/redirect-chain")
    assert result.ok
    assert result.final_url == f"{site.base}/articles/1"
    assert result.redirects == [f"{site.base}/redirect-chain/2", f"{site.base}/articles/1"]


def test_redirect_loop(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    result = fetch(runtime, f"{site.base}/loop/a")
    assert result.error == PageErrorCode.REDIRECT_LOOP


def test_redirect_to_private_address_is_refused_before_connecting(
    runtime: CrawlRuntime, site: GeneratedSite
) -> None:
    before = len(site.canary_hits)
    result = fetch(runtime, f"{site.base}/redirect-private")
    assert result.error == PageErrorCode.UNSAFE_URL
    assert len(site.canary_hits) == before


def test_huge_page_is_cut_at_the_limit(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    result = fetch(runtime, f"{site.base}/huge")
    assert result.error == PageErrorCode.TOO_LARGE
    assert result.body == b""


def test_binaries_are_skipped_not_downloaded(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    for path in ("/files/report.pdf", "/files/logo.png"):
        result = fetch(runtime, site.base + path)
        assert result.error == PageErrorCode.UNSUPPORTED_CONTENT_TYPE, path
        assert result.body == b""


def test_missing_content_type_is_sniffed(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    result = fetch(runtime, f"{site.base}/no-type")
    assert result.ok and result.content_type == "text/html"


@pytest.mark.parametrize("code", [404, 500])
def test_http_errors_keep_status(runtime: CrawlRuntime, site: GeneratedSite, code: int) -> None:
    result = fetch(runtime, f"{site.base}/status/{code}")
    assert result.error == PageErrorCode.HTTP_ERROR and result.status_code == code


def test_slow_page_times_out(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    started = time.monotonic()
    result = fetch(runtime, f"{site.base}/slow?s=3", timeout_s=0.5)
    assert result.error == PageErrorCode.TIMEOUT
    assert time.monotonic() - started < 2.5


def test_retry_after_is_honoured(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    started = time.monotonic()
    result = fetch(runtime, f"{site.base}/flaky?key=retry-test")
    assert result.ok and result.status_code == 200
    assert time.monotonic() - started >= 0.9  # waited the server's Retry-After: 1
    assert site.hits["/flaky"] >= 2


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_retries_stop_when_server_wants_too_long_and_host_header_is_dropped() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(429, headers={"Retry-After": "3600"}, text="slow down")

    async def scenario() -> None:
        fetcher = Fetcher(CrawlConfig(), transport=httpx.MockTransport(handler))
        try:
            result = await fetcher.fetch(
                "http://93.184.215.14/x", headers={"Host": "evil.test", "Cookie": "a=1"}
            )
        finally:
            await fetcher.aclose()
        assert result.status_code == 429 and result.error == PageErrorCode.HTTP_ERROR

    import asyncio

    asyncio.run(scenario())
    assert len(seen) == 1  # no retry: the server asked for an hour
    assert seen[0].headers["host"] == "93.184.215.14"
    assert seen[0].headers["cookie"] == "a=1"


def test_credentials_are_not_forwarded_across_origins() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "93.184.215.14":
            return httpx.Response(302, headers={"Location": "http://8.8.8.8/next"})
        return httpx.Response(200, headers={"Content-Type": "text/html"}, text="<p>ok</p>")

    async def scenario() -> None:
        fetcher = Fetcher(CrawlConfig(), transport=httpx.MockTransport(handler))
        try:
            result = await fetcher.fetch("http://93.184.215.14/", headers={"Cookie": "s=1"})
        finally:
            await fetcher.aclose()
        assert result.ok and result.final_url == "http://8.8.8.8/next"

    import asyncio

    asyncio.run(scenario())
    assert seen[0].headers.get("cookie") == "s=1"
    assert "cookie" not in seen[1].headers
