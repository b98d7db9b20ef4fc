"""Pages convert in separate processes (``crawler.runtime.ConvertPool``): a conversion process
that dies is replaced, and a page whose conversion dies twice fails alone (``crawl_failed``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

from crawler.convert import Document, convert
from crawler.engine import crawl_page
from crawler.runtime import ConvertPool, CrawlRuntime
from crawler.schemas import CrawlRequest
from tests.sites.site import GeneratedSite, _article


def _die() -> None:
    os._exit(3)  # what a conversion process killed by the OOM killer (or a crash) looks like


def test_a_dead_conversion_process_is_replaced() -> None:
    pool = ConvertPool(1)
    try:
        html = _article(10, False, 3)
        first = pool.submit(convert, html, "http://s.test/articles/3").result(timeout=120)
        assert first.markdown.startswith("# Article 3:") and "| Metric | Value |" in first.markdown
        first_pid = pool.submit(os.getpid).result(timeout=60)
        assert first_pid != os.getpid()  # converted in another process
        with pytest.raises(BrokenProcessPool):
            pool.submit(_die).result(timeout=60)
        again = pool.submit(convert, html, "http://s.test/articles/3").result(timeout=120)
        assert again.markdown == first.markdown
        assert pool.submit(os.getpid).result(timeout=60) not in (first_pid, os.getpid())
    finally:
        pool.shutdown()


class _AlwaysDies(Executor):
    """An executor whose every conversion process dies."""

    def __init__(self) -> None:
        self.calls = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls += 1
        future: Future[Document] = Future()
        future.set_exception(BrokenProcessPool("A process in the pool died."))
        return future


def test_a_page_whose_conversion_dies_twice_fails_alone(
    runtime: CrawlRuntime, site: GeneratedSite
) -> None:
    request = CrawlRequest(url=f"{site.base}/articles/1")
    dies = _AlwaysDies()
    outcome = runtime.run(
        crawl_page(request.start_url, request, fetcher=runtime.fetcher, renderer=None,
                   robots=None, executor=dies)
    )  # fmt: skip
    assert outcome.status == "failed" and outcome.reason == "crawl_failed"
    assert outcome.status_code == 200 and dies.calls == 2
    # The runtime's own pool converts the same page in a conversion process.
    ok = runtime.run(
        crawl_page(request.start_url, request, fetcher=runtime.fetcher, renderer=None,
                   robots=None, executor=runtime.converter)
    )  # fmt: skip
    assert ok.status == "crawled" and ok.record is not None
    assert ok.record.markdown.startswith("# Article 1:")
