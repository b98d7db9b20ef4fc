"""Per-process crawl resources: one event loop thread, one HTTP client, one browser, and the
processes that convert pages (:class:`ConvertPool`).

Celery runs task bodies synchronously; crawls are asyncio. Each worker process gets one event
loop in a background thread (created lazily, after fork), and every crawl task of that process
runs its coroutine there, so the httpx client's connection pool and the Chromium browser are
shared by all the crawls the process runs. ``RUNTIME`` (a ``common.process.ProcessResource``)
holds it: the worker's lifecycle hooks start and close it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ParamSpec, TypeVar

from common.process import ProcessResource
from crawler.config import CrawlConfig
from crawler.convert import convert
from crawler.fetch import Fetcher
from crawler.render import Renderer

T = TypeVar("T")
P = ParamSpec("P")


class ConvertPool(Executor):
    """Processes that convert pages (HTML → Markdown is a crawl's CPU work), so a worker
    process's crawls use every core while its event loop keeps fetching.

    Started on first use as fresh interpreters (``spawn``) that import only what conversion
    needs (lxml, markdownify): each costs about 15 MB, not a copy of the platform. By default
    one per CPU core but one, the event loop's (fetching and recording). A pool whose process
    died is replaced on the next submit.

    A prefork pool's child may not start processes (it is daemonic): it converts in threads,
    while its sibling processes give the crawl the other cores.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes or max(1, (os.cpu_count() or 1) - 1)
        self._pool: Executor | None = None
        self._lock = threading.Lock()

    @staticmethod
    def in_threads() -> bool:
        return bool(multiprocessing.current_process().daemon)

    def _current(self) -> Executor:
        with self._lock:
            if self._pool is None:
                if self.in_threads():
                    self._pool = ThreadPoolExecutor(thread_name_prefix="convert")
                else:
                    context = multiprocessing.get_context("spawn")
                    self._pool = ProcessPoolExecutor(self.processes, mp_context=context)
            return self._pool

    def _replace(self, broken: Executor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        pool = self._current()
        try:
            return pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            self._replace(pool)
            return self._current().submit(fn, *args, **kwargs)

    def start(self) -> None:
        """Boot the processes now, so that a first crawl waits for none of them."""
        for _ in range(0 if self.in_threads() else self.processes):
            self.submit(convert, b"", "http://localhost/")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)


class CrawlRuntime:
    def __init__(self, config: CrawlConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="crawl-loop", daemon=True
        )
        self._thread.start()
        self.fetcher: Fetcher = self.run(self._make_fetcher())
        self.converter = ConvertPool(config.convert_processes)
        self.converter.start()
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
        self.converter.shutdown(wait=False, cancel_futures=True)

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
