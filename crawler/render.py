"""Rendering pages with one Playwright Chromium per worker process.

A bounded number of pages render at once (each in its own browser context, so cookies and
headers never leak between crawls). Every request the browser makes goes through route
interception: the SSRF guard refuses unsafe hosts, and images, fonts and media are not loaded
unless a screenshot is wanted. A page that hangs is closed at its timeout without taking the
browser down; a browser that crashes is relaunched on the next render.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

# The same class as ``playwright.async_api.Error``, without importing Playwright's client (a few
# MB per worker process) before a crawl first needs a browser.
from playwright._impl._errors import Error as PlaywrightError

from crawler.config import CHROMIUM_ARGS, CrawlConfig
from crawler.fetch import CREDENTIAL_HEADERS, REDIRECT_STATUSES, PageErrorCode, clean_headers
from crawler.safety import AllowList, DNSError, UnsafeURLError, check_url_async

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, Playwright, Route

# Not needed to read a page's content (all of them are loaded when taking a screenshot).
HEAVY_RESOURCES = frozenset({"image", "font", "media", "stylesheet"})
# A page showing less text than this after "load" is given time for its scripts to fill it.
SETTLE_TEXT_CHARS = 200
SETTLE_MAX_MS = 2500
RouteHandler = Callable[["Route"], Awaitable[None]]


@dataclass
class _Tab:
    """A browser context with one page, reused by later renders of the same session."""

    key: str
    generation: int
    context: BrowserContext
    page: Page | None = None
    result: RenderResult | None = None
    screenshot: bool = False


@dataclass
class RenderResult:
    url: str
    final_url: str
    status_code: int | None = None
    html: str = ""
    screenshot: bytes | None = None
    error: PageErrorCode | None = None
    message: str = ""
    blocked: list[str] = field(default_factory=list)
    fetched_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        return self.error is None


class Renderer:
    """``async with Renderer(config) as r: await r.render(url)``; start/close also explicit."""

    def __init__(self, config: CrawlConfig | None = None) -> None:
        self.config = config or CrawlConfig()
        self.allowed = AllowList.parse(self.config.allowed_hosts)
        self._pool = asyncio.Semaphore(self.config.render_pool_size)
        self._lock = asyncio.Lock()
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self.launches = 0
        self._idle: list[_Tab] = []

    async def __aenter__(self) -> Renderer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        await self._ensure_browser()

    async def close(self) -> None:
        self._idle.clear()
        if self._browser is not None:
            with contextlib.suppress(PlaywrightError):
                await self._browser.close()
            self._browser = None
        if self._playwright is not None:
            await self._playwright.stop()
            self._playwright = None

    async def _ensure_browser(self) -> Browser:
        async with self._lock:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            if not os.path.exists(self.config.chromium_path):
                raise PlaywrightError(
                    f"Chromium is not installed at {self.config.chromium_path}: install it with "
                    "`apt-get install chromium` (`make run` does not; `make test` does), or set "
                    "CONVEYOR_CRAWL_CHROMIUM_PATH. Crawls with render=never need no browser."
                )
            if self._playwright is None:
                from playwright.async_api import async_playwright

                self._playwright = await async_playwright().start()
            self._browser = await self._playwright.chromium.launch(
                executable_path=self.config.chromium_path,
                args=list(CHROMIUM_ARGS),
                headless=True,
            )
            self.launches += 1
            return self._browser

    @property
    def browser(self) -> Browser | None:
        return self._browser

    async def render(
        self,
        url: str,
        *,
        timeout_ms: int | None = None,
        wait_for_ms: int = 0,
        screenshot: bool = False,
        headers: Mapping[str, str] | None = None,
        session_key: str = "",
    ) -> RenderResult:
        """Load ``url`` in Chromium and return its rendered HTML (never raises for page errors).

        Renders with the same ``session_key`` (a crawl) reuse idle tabs (cookies included);
        without one every render gets a fresh browser context.
        """
        timeout_ms = timeout_ms or self.config.render_timeout_ms
        result = RenderResult(url=url, final_url=url)
        try:
            await check_url_async(url, self.allowed)
        except DNSError as exc:
            result.error, result.message = PageErrorCode.DNS_ERROR, exc.message
            return result
        except UnsafeURLError as exc:
            result.error, result.message = PageErrorCode.UNSAFE_URL, exc.message
            return result
        async with self._pool:
            for attempt in range(2):
                try:
                    await asyncio.wait_for(
                        self._render(
                            result, timeout_ms, wait_for_ms, screenshot, headers, session_key
                        ),
                        timeout=timeout_ms / 1000 + 5,
                    )
                    return result
                except TimeoutError:
                    result.error = PageErrorCode.TIMEOUT
                    result.message = f"Rendering took longer than {timeout_ms} ms."
                    return result
                except PlaywrightError as exc:
                    browser = self._browser
                    if attempt == 0 and (browser is None or not browser.is_connected()):
                        continue  # the browser died under us: relaunch and try once more
                    result.error = PageErrorCode.RENDER_FAILED
                    result.message = exc.message.splitlines()[0] if exc.message else repr(exc)
                    return result
        return result

    async def _acquire(self, key: str, headers: Mapping[str, str] | None) -> _Tab:
        """An idle tab of the same session (a crawl reuses its tabs), else a new context."""
        browser = await self._ensure_browser()
        for tab in self._idle:
            if tab.key == key and tab.generation == self.launches:
                self._idle.remove(tab)
                return tab
        context = await browser.new_context(
            user_agent=self.config.user_agent,
            extra_http_headers=clean_headers(headers),
            service_workers="block",
            java_script_enabled=True,
        )
        tab = _Tab(key=key, generation=self.launches, context=context)
        await context.route("**/*", self._route_handler(tab))
        tab.page = await context.new_page()
        return tab

    async def end_session(self, session_key: str) -> None:
        """Close the idle tabs a finished crawl kept."""
        mine = [t for t in self._idle if t.key.startswith(f"{session_key}|")]
        self._idle = [t for t in self._idle if t not in mine]
        for tab in mine:
            with contextlib.suppress(PlaywrightError):
                await tab.context.close()

    async def _release(self, tab: _Tab, reusable: bool) -> None:
        """Keep a healthy tab for its session (evicting the oldest idle one), else close it."""
        closing = [tab]
        if reusable and tab.key and tab.generation == self.launches:
            self._idle.append(tab)
            closing = self._idle[: max(0, len(self._idle) - self.config.render_pool_size)]
            del self._idle[: len(closing)]
        for old in closing:
            with contextlib.suppress(PlaywrightError):
                await old.context.close()

    async def _render(
        self,
        result: RenderResult,
        timeout_ms: int,
        wait_for_ms: int,
        screenshot: bool,
        headers: Mapping[str, str] | None,
        session_key: str,
    ) -> None:
        key = f"{session_key}|{sorted(clean_headers(headers).items())}" if session_key else ""
        tab = await self._acquire(key, headers)
        tab.result, tab.screenshot = result, screenshot
        reusable = False
        try:
            page = tab.page
            assert page is not None
            page.set_default_timeout(timeout_ms)
            try:
                response = await page.goto(result.url, wait_until="load", timeout=timeout_ms)
            except PlaywrightError as exc:
                if "ERR_BLOCKED_BY_CLIENT" in (exc.message or "") and result.blocked:
                    result.error = PageErrorCode.UNSAFE_URL
                    result.message = f"Blocked request to {result.blocked[0]}"
                    return
                if "Timeout" in type(exc).__name__ or "Timeout" in (exc.message or ""):
                    result.error = PageErrorCode.TIMEOUT
                    result.message = f"Navigation took longer than {timeout_ms} ms."
                    return
                raise
            if wait_for_ms:
                await page.wait_for_timeout(wait_for_ms)
            with contextlib.suppress(PlaywrightError):
                # Static pages are done at "load"; a JS shell gets until its text shows up.
                await page.wait_for_function(
                    f"document.body && document.body.innerText.length >= {SETTLE_TEXT_CHARS}",
                    timeout=min(timeout_ms, SETTLE_MAX_MS),
                )
            if result.final_url == result.url:
                result.final_url = page.url
            result.status_code = response.status if response is not None else None
            result.html = await page.content()
            if screenshot:
                result.screenshot = await page.screenshot(full_page=True, type="png")
            if result.status_code is not None and result.status_code >= 400:
                result.error = PageErrorCode.HTTP_ERROR
                result.message = f"HTTP {result.status_code}"
            reusable = True
        finally:
            tab.result = None
            await self._release(tab, reusable)

    def _route_handler(self, tab: _Tab) -> RouteHandler:
        """Every browser request: refuse heavy resources and unsafe hosts, follow redirects here.

        Playwright routes only the first URL of a redirect chain (Chromium follows the rest
        internally), so each request is fetched through the route without following redirects,
        every hop is checked by the guard, and the final response is handed to the page.
        """
        allowed, max_hops = self.allowed, self.config.max_redirects

        async def handle(route: Route) -> None:
            request = route.request
            result = tab.result
            if result is None:  # an idle tab's leftover request
                await route.abort("aborted")
                return
            if not tab.screenshot and request.resource_type in HEAVY_RESOURCES:
                await route.abort("blockedbyclient")
                return
            if request.url.startswith(("data:", "blob:", "about:")):
                await route.continue_()
                return
            main_nav = request.is_navigation_request() and request.frame.parent_frame is None
            url, headers = request.url, dict(request.headers)
            origin = urlsplit(url).netloc
            for _hop in range(max_hops + 1):
                try:
                    await check_url_async(url, allowed)
                except UnsafeURLError:
                    result.blocked.append(url)
                    await route.abort("blockedbyclient")
                    return
                if urlsplit(url).netloc != origin:
                    headers = {k: v for k, v in headers.items() if k not in CREDENTIAL_HEADERS}
                try:
                    response = await route.fetch(url=url, headers=headers, max_redirects=0)
                except PlaywrightError:
                    await route.abort("failed")
                    return
                location = response.headers.get("location")
                if response.status in REDIRECT_STATUSES and location:
                    url = urljoin(url, location)
                    if main_nav:
                        result.final_url = url
                    continue
                await route.fulfill(response=response)
                return
            await route.abort("failed")

        return handle
