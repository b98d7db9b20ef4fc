"""Crawler fixtures: the generated site on 127.0.0.1, one crawl runtime (one Chromium) shared
by every test of the session, and the allow-list setting that lets crawls reach the site."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from crawler.config import CrawlConfig
from crawler.runtime import CrawlRuntime, install_runtime
from tests.sites.site import GeneratedSite

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def site() -> Iterator[GeneratedSite]:
    with GeneratedSite(pages=300) as running:
        yield running


@pytest.fixture(scope="session")
def crawl_config(site: GeneratedSite) -> CrawlConfig:
    return CrawlConfig(
        allowed_hosts=site.host,  # every port on 127.0.0.1; the canary on 127.0.0.2 stays refused
        max_retries=2,
        retry_backoff_s=0.05,
        max_retry_after_s=5.0,
        render_timeout_ms=15_000,
    )


@pytest.fixture(scope="session")
def runtime(crawl_config: CrawlConfig) -> Iterator[CrawlRuntime]:
    """One event loop thread, HTTP client and (lazily) one Chromium for the whole session."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    rt = CrawlRuntime(crawl_config)
    install_runtime(rt)
    yield rt
    rt.close()


@pytest.fixture
def crawl_settings(
    site: GeneratedSite, runtime: CrawlRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point the platform's allow-list setting at the test site for one test (never turning
    the guard off, and never leaking into other areas' tests)."""
    from config import get_settings

    settings = get_settings()
    monkeypatch.setattr(settings, "crawl_allowed_hosts", site.host)
    monkeypatch.setattr(settings, "crawl_split_threshold", 10**9)  # in-process: no helpers
