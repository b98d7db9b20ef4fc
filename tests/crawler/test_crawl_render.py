"""Rendering with the session's one Chromium: JS pages, the guard inside the browser,
timeouts that spare the browser, and a relaunch after a crash."""

from __future__ import annotations

from crawler.fetch import PageErrorCode
from crawler.runtime import CrawlRuntime
from tests.sites.site import GeneratedSite


def render(runtime: CrawlRuntime, url: str, **kw: object):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        renderer = await runtime.renderer()
        return await renderer.render(url, **kw)  # type: ignore[arg-type]

    return runtime.run(go())


def test_js_only_page_renders(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    result = render(runtime, f"{site.base}/js/2")
    assert result.ok and result.status_code == 200
    assert "Rendered by JavaScript" in result.html


def test_browser_redirect_to_private_address_is_blocked(
    runtime: CrawlRuntime, site: GeneratedSite
) -> None:
    before = len(site.canary_hits)
    result = render(runtime, f"{site.base}/redirect-private")
    assert result.error == PageErrorCode.UNSAFE_URL
    assert len(site.canary_hits) == before


def test_page_scripts_cannot_reach_private_addresses(
    runtime: CrawlRuntime, site: GeneratedSite
) -> None:
    before = len(site.canary_hits)
    result = render(runtime, f"{site.base}/js-probe", wait_for_ms=300)
    assert result.ok and "Probe page" in result.html
    assert any("via=fetch" in url for url in result.blocked)
    assert len(site.canary_hits) == before


def test_redirects_followed_in_browser(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    result = render(runtime, f"{site.base}/redirect-chain")
    assert result.ok and result.final_url == f"{site.base}/articles/1"
    assert "Article 1:" in result.html


def test_hanging_page_times_out_without_killing_browser(
    runtime: CrawlRuntime, site: GeneratedSite
) -> None:
    result = render(runtime, f"{site.base}/slow?s=4", timeout_ms=1000)
    assert result.error == PageErrorCode.TIMEOUT
    assert render(runtime, f"{site.base}/js/1").ok


def test_screenshot_is_png(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    result = render(runtime, f"{site.base}/articles/3", screenshot=True)
    assert result.ok and result.screenshot is not None
    assert result.screenshot.startswith(b"\x89PNG")


def test_browser_is_relaunched_after_a_crash(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    async def crash() -> int:
        renderer = await runtime.renderer()
        assert renderer.browser is not None
        await renderer.browser.close()
        return renderer.launches

    launches = runtime.run(crash())
    result = render(runtime, f"{site.base}/js/3")
    assert result.ok and "JS page 3" in result.html

    async def count() -> int:
        return (await runtime.renderer()).launches

    assert runtime.run(count()) == launches + 1


def test_tabs_are_reused_within_a_session_only(runtime: CrawlRuntime, site: GeneratedSite) -> None:
    async def contexts() -> int:
        renderer = await runtime.renderer()
        assert renderer.browser is not None
        return len(renderer.browser.contexts)

    before = runtime.run(contexts())
    for i in range(3):
        assert render(runtime, f"{site.base}/articles/{i}", session_key="crawl-a").ok
    assert runtime.run(contexts()) == before + 1  # one tab served the whole session
    assert render(runtime, f"{site.base}/articles/4", session_key="crawl-b").ok
    assert runtime.run(contexts()) == before + 2  # another session never gets crawl-a's tab
    assert render(runtime, f"{site.base}/articles/5").ok
    assert runtime.run(contexts()) == before + 2  # no session: a throwaway context


def test_a_missing_browser_says_how_to_install_it(site: GeneratedSite) -> None:
    import asyncio
    import dataclasses

    from crawler.config import CrawlConfig
    from crawler.render import Renderer

    config = dataclasses.replace(
        CrawlConfig(allowed_hosts=site.host), chromium_path="/nonexistent/chromium"
    )

    async def go():  # type: ignore[no-untyped-def]
        renderer = Renderer(config)
        try:
            return await renderer.render(f"{site.base}/js/2")
        finally:
            await renderer.close()

    result = asyncio.run(go())
    assert result.error == PageErrorCode.RENDER_FAILED
    assert "apt-get install chromium" in (result.message or "")
