"""Firecrawl compatibility: the official ``firecrawl-py`` SDK, unchanged, runs its README's
examples (scrape, crawl, start_crawl + get_crawl_status, cancel_crawl, map) against a real
Conveyor API (uvicorn) and worker, crawling the local test site; ``POST /v1/scrape`` and
``/v1/map`` take both spellings of each field; every crawled page carries its metadata and the
joined Markdown export names each page."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from firecrawl import Firecrawl
from firecrawl.types import ScrapeOptions

from tests.helpers import wait_for_job
from tests.sites.site import GeneratedSite

pytestmark = pytest.mark.usefixtures("crawl_settings", "worker")


@pytest.fixture
def firecrawl(live_api: str, org: Any) -> Firecrawl:
    return Firecrawl(api_key=org.key, api_url=live_api)


def _meta_ok(meta: Any, url: str) -> None:
    assert meta.source_url == url and meta.url == url
    assert meta.status_code == 200 and meta.language == "en"
    assert meta.content_type == "text/html" and meta.title and meta.description


def test_sdk_readme_scrape(firecrawl: Firecrawl, site: GeneratedSite) -> None:
    url = f"{site.base}/articles/5"
    # README: data = firecrawl.scrape('https://firecrawl.dev', formats=['markdown', 'html'])
    data = firecrawl.scrape(url, formats=["markdown", "html"])
    assert data.markdown is not None and data.markdown.startswith("# Article 5:")
    assert data.html is not None and "<h1" in data.html
    assert data.metadata is not None and data.metadata.title.startswith("Article 5:")
    _meta_ok(data.metadata, url)
    links = firecrawl.scrape(url, formats=["links"], only_main_content=False)
    assert links.markdown is None and f"{site.base}/articles/4" in (links.links or [])


def test_sdk_readme_crawl_and_status(firecrawl: Firecrawl, site: GeneratedSite) -> None:
    # README: firecrawl.crawl(url, limit=100, scrape_options=ScrapeOptions(formats=[...]), …)
    crawl_status = firecrawl.crawl(
        f"{site.base}/list/5",
        limit=12,
        include_paths=["^/(list|articles)/"],
        scrape_options=ScrapeOptions(formats=["markdown", "html"]),
        poll_interval=1,
        timeout=180,
    )
    assert crawl_status.status == "completed", crawl_status
    assert crawl_status.completed == 12 and len(crawl_status.data) == 12
    for doc in crawl_status.data:
        assert doc.markdown and doc.html and doc.metadata is not None
        _meta_ok(doc.metadata, doc.metadata.source_url or "")
    # README: crawl_job = firecrawl.start_crawl(…); firecrawl.get_crawl_status(crawl_job.id)
    crawl_job = firecrawl.start_crawl(f"{site.base}/articles/1", limit=1)
    assert crawl_job.id and crawl_job.url and crawl_job.url.endswith(f"/v2/crawl/{crawl_job.id}")
    deadline = time.monotonic() + 60
    status = firecrawl.get_crawl_status(crawl_job.id)
    while status.status == "scraping" and time.monotonic() < deadline:
        time.sleep(0.5)
        status = firecrawl.get_crawl_status(crawl_job.id)
    assert status.status == "completed" and status.total == 1 and len(status.data) == 1
    # README: firecrawl.cancel_crawl(id): False once the crawl completed (HTTP 409).
    assert firecrawl.cancel_crawl(crawl_job.id) is False
    # README: get_crawl_errors(crawl_status.id) after the crawl.
    missing = firecrawl.crawl(
        f"{site.base}/status/404", limit=1, sitemap="skip", poll_interval=1, timeout=60
    )
    assert missing.status == "failed" and missing.id
    (error,) = firecrawl.get_crawl_errors(missing.id).errors
    assert error.url == f"{site.base}/status/404" and error.code == "http_error"


def test_sdk_cancel_and_paginated_status(
    firecrawl: Firecrawl, site: GeneratedSite, client: Any, org: Any
) -> None:
    job = firecrawl.start_crawl(f"{site.base}/", limit=150)
    assert firecrawl.cancel_crawl(job.id) is True
    assert client.get(f"/v1/jobs/{job.id}", headers=org.headers).json()["status"] == "cancelled"
    assert firecrawl.get_crawl_status(job.id).status == "cancelled"
    # A bigger crawl pages its status: the SDK follows ``next`` and gets every document.
    done = firecrawl.crawl(f"{site.base}/", limit=130, poll_interval=1, timeout=240)
    assert done.status == "completed" and done.completed == 130 and len(done.data) == 130
    assert len({d.metadata.source_url for d in done.data if d.metadata}) == 130


def test_sdk_readme_map(firecrawl: Firecrawl, site: GeneratedSite) -> None:
    # README: map_result = firecrawl.map('https://firecrawl.dev')
    map_result = firecrawl.map(f"{site.base}/")
    urls = [link.url for link in map_result.links]
    assert urls[0] == f"{site.base}/" and len(urls) == len(set(urls)) > 50
    assert set(site.article_urls()[:20]) <= set(urls)  # from the sitemap and the links
    assert all(u.startswith(site.base) for u in urls)
    few = firecrawl.map(f"{site.base}/", search="articles/1", limit=5)
    assert 0 < len(few.links) <= 5 and all("articles/1" in link.url for link in few.links)


def test_v1_scrape_takes_both_spellings(client: Any, org: Any, site: GeneratedSite) -> None:
    url = f"{site.base}/articles/7"
    for body in (
        {"url": url, "formats": ["markdown", "links"], "onlyMainContent": False, "waitFor": 0},
        {"url": url, "formats": ["markdown", "links"], "only_main_content": False, "wait_for": 0},
    ):
        r = client.post("/v1/scrape", json=body, headers=org.headers)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["success"] is True and out["data"]["markdown"]
        assert "Newsletter" in out["data"]["markdown"]  # not only the main content
        meta = out["data"]["metadata"]
        assert meta["source_url"] == meta["sourceURL"] == url and meta["status_code"] == 200
        assert meta["content_type"] == "text/html" and meta["title"].startswith("Article 7:")
        assert f"{site.base}/articles/6" in out["data"]["links"]
    tags = client.post(
        "/v1/scrape",
        json={"url": url, "include_tags": ["h1"], "excludeTags": ["pre"]},
        headers=org.headers,
    )
    assert tags.status_code == 200 and tags.json()["data"]["markdown"].startswith("# Article 7")
    assert "\n" not in tags.json()["data"]["markdown"].strip()


def test_v1_scrape_guards_and_timeouts(client: Any, org: Any, site: GeneratedSite) -> None:
    unsafe = client.post("/v1/scrape", json={"url": "http://169.254.169.254/"}, headers=org.headers)
    assert unsafe.status_code == 422 and unsafe.json()["error"]["code"] == "unsafe_url"
    assert unsafe.json()["success"] is False
    bad = client.post(
        "/v1/scrape", json={"url": site.base, "formats": ["summary"]}, headers=org.headers
    )
    assert bad.status_code == 422 and "supported: markdown" in bad.text
    missing = client.post(
        "/v1/scrape", json={"url": f"{site.base}/status/404"}, headers=org.headers
    )
    assert missing.status_code == 502 and missing.json()["error"]["code"] == "scrape_failed"
    assert missing.json()["error"]["details"]["error"]["code"] == "http_error"
    # Not finished within ``timeout``: 202 with the job, which goes on.
    slow = client.post(
        "/v1/scrape", json={"url": f"{site.base}/slow?s=3", "timeout": 1000}, headers=org.headers
    )
    assert slow.status_code == 202, slow.text
    assert slow.json()["kind"] == "crawl" and slow.headers["location"].startswith("/v1/jobs/")
    job = wait_for_job(client, slow.json()["id"], org.headers, timeout=60)
    assert job["status"] == "completed"


def test_v1_map_takes_both_spellings(client: Any, org: Any, site: GeneratedSite) -> None:
    for body in (
        {"url": f"{site.base}/list/0", "useSitemap": False, "includeSubdomains": False},
        {"url": f"{site.base}/list/0", "use_sitemap": False, "include_subdomains": False},
    ):
        r = client.post("/v1/map", json={**body, "limit": 10}, headers=org.headers)
        assert r.status_code == 200, r.text
        assert r.json()["success"] is True and r.json()["data"]["links"] == r.json()["links"]
        assert len(r.json()["links"]) == 10 and r.json()["links"][0] == f"{site.base}/list/0"
    unsafe = client.post("/v1/map", json={"url": "http://10.0.0.1/"}, headers=org.headers)
    assert unsafe.status_code == 422 and unsafe.json()["error"]["code"] == "unsafe_url"


def test_crawl_pages_carry_metadata_and_markdown_names_each_page(
    client: Any, org: Any, site: GeneratedSite
) -> None:
    r = client.post(
        "/v1/crawls",
        json={"url": f"{site.base}/list/2", "mode": "full", "max_pages": 5},
        headers=org.headers,
    )
    job = wait_for_job(client, r.json()["id"], org.headers, timeout=120)
    assert job["status"] == "completed", job
    ndjson = client.get(f"/v1/jobs/{job['id']}/result?format=json", headers=org.headers)
    records = [json.loads(line) for line in ndjson.text.splitlines()]
    assert len(records) == 5
    for record in records:
        meta = record["metadata"]
        assert meta["source_url"] == record["url"] and meta["url"] == record["final_url"]
        assert meta["status_code"] == 200 and meta["content_type"] == "text/html"
        assert meta["title"] == record["title"] and meta["language"] == "en"
    md = client.get(f"/v1/jobs/{job['id']}/result?format=markdown", headers=org.headers).text
    pages = md.split("\n\n---\n\n")
    assert [p.split("\n", 1)[0] for p in pages] == [
        f"<!-- source: {record['url']} -->" for record in records
    ]
