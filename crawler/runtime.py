"""Per-process crawl resources: one event loop thread, one HTTP client, one browser.

Celery runs task bodies synchronously; crawls are asyncio. Each worker process gets one event
loop in a background thread (created lazily, after fork), and every crawl task of that process
runs its coroutine there, so the httpx client's connection pool and the Chromium browser are
shared by all the crawls the process runs. ``RUNTIME`` (a ``common.process.ProcessResource``)
holds it: the worker's lifecycle hooks start and close it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from common.process import ProcessResource
from crawler.config import CrawlConfig
from crawler.fetch import Fetcher
from crawler.render import Renderer

T = TypeVar("T")


class CrawlRuntime:
    def __init__(self, config: CrawlConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="crawl-loop", daemon=True
        )
        self._thread.start()
        self.fetcher: Fetcher = self.run(self._make_fetcher())
        self._renderer: Renderer | None = None
        self._renderer_lock: asyncio.Lock | None = None

    async def _make_fetcher(self) -> Fetcher:
        return Fetcher(self.config)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the process loop and wait for its result (from any thread).

        If the waiting thread is interrupted (Celery's soft time limit, shutdown), the
        coroutine is cancelled too, so its cleanup (giving back claimed URLs) runs.
        """
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def renderer(self) -> Renderer:
        """The process's browser, launched on first use (most crawls never need it)."""
        if self._renderer_lock is None:
            self._renderer_lock = asyncio.Lock()
        async with self._renderer_lock:
            if self._renderer is None:
                renderer = Renderer(self.config)
                await renderer.start()
                self._renderer = renderer
        return self._renderer

    async def end_session(self, session_key: str) -> None:
        """Free what a finished crawl held in the browser (if the browser was ever started)."""
        if self._renderer is not None:
            await self._renderer.end_session(session_key)

    async def _aclose(self) -> None:
        if self._renderer is not None:
            await self._renderer.close()
            self._renderer = None
        await self.fetcher.aclose()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.run(self._aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()


#: This process's runtime: started by the worker's start-up hook (``workers.lifecycle``) or on
#: the first crawl, closed by its shutdown hook.
RUNTIME: ProcessResource[CrawlRuntime] = ProcessResource(
    "crawl runtime", lambda: CrawlRuntime(CrawlConfig.from_settings()), CrawlRuntime.close
)


def get_runtime() -> CrawlRuntime:
    """This process's runtime (a forked child never reuses its parent's)."""
    return RUNTIME.get()


def shutdown_runtime() -> None:
    RUNTIME.close()


def install_runtime(runtime: CrawlRuntime) -> None:
    """Make ``runtime`` this process's runtime (tests share one browser this way)."""
    RUNTIME.install(runtime)
