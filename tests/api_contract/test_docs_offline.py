"""The API's root and its interactive docs work on a box with no internet: ``GET /`` lists the
links, and ``/docs`` renders Swagger UI from the package's own files in a real Chromium that may
reach nothing but the API itself."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from crawler.config import CHROMIUM_ARGS

CHROMIUM = "/usr/bin/chromium"


def test_the_root_lists_where_things_are(client: Any) -> None:
    response = client.get("/")
    assert response.status_code == 200
    links = response.json()["links"]
    assert {"docs", "openapi", "health", "flower"} <= set(links)
    assert client.get(links["docs"]).status_code == 200


def test_docs_render_with_no_internet(live_api: str, tmp_path: Path) -> None:
    from playwright.sync_api import Route, sync_playwright

    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    outside: list[str] = []

    def only_the_api(route: Route) -> None:
        if urlparse(route.request.url).netloc == urlparse(live_api).netloc:
            route.continue_()
        else:  # a CDN: unreachable on an offline box
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            page = browser.new_page()
            page.route("**/*", only_the_api)
            page.goto(f"{live_api}/docs")
            title = page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
            assert title is not None and "Conveyor" in title.inner_text()
            page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            shot = tmp_path / "docs.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert outside == [], f"the docs page reached outside the API: {outside}"
