"""End to end: crawl jobs through the REST API, run by a real Celery worker."""

from __future__ import annotations

import pytest

from tests.helpers import wait_for_job
from tests.sites.site import GeneratedSite

pytestmark = pytest.mark.usefixtures("crawl_settings", "worker")


def test_single_page_markdown_download(client, org, site: GeneratedSite) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/v1/crawls", json={"url": f"{site.base}/articles/5"}, headers=org.headers)
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"], org.headers, timeout=60)
    assert job["status"] == "completed", job
    assert (job["pages_crawled"], job["pages_failed"], job["mode"]) == (1, 0, "single")
    res = client.get(f"/v1/jobs/{job['id']}/result?format=markdown", headers=org.headers)
    assert res.status_code == 200
    assert 'filename="result.md"' in res.headers["content-disposition"]
    assert res.text.startswith("# Article 5:")
    assert "```python" in res.text and "| Metric | Value |" in res.text
    assert "cookies" not in res.text and "Newsletter" not in res.text
