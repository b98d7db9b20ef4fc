"""End to end: crawl jobs through the REST API, run by a real Celery worker, against the
generated site (counters, Markdown, errors, robots blocks, formats, cancellation)."""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import wait_for_job
from tests.sites.site import GeneratedSite

pytestmark = pytest.mark.usefixtures("crawl_settings", "worker")


def submit(client: Any, org: Any, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/crawls", json=body, headers=org.headers)
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "crawl" and r.json()["status"] == "queued"
    return r.json()  # type: ignore[no-any-return]


def records(client: Any, org: Any, job_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/jobs/{job_id}/result?format=json", headers=org.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines() if line]


def errors(client: Any, org: Any, job_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        r = client.get(f"/v1/jobs/{job_id}/errors", params=params, headers=org.headers)
        assert r.status_code == 200, r.text
        out += r.json()["data"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return out


def test_single_page_markdown_download(client, org, site: GeneratedSite) -> None:  # type: ignore[no-untyped-def]
    job = submit(client, org, url=f"{site.base}/articles/5")
    assert job["url"] == f"{site.base}/articles/5" and job["mode"] == "single"
    job = wait_for_job(client, job["id"], org.headers, timeout=60)
    assert job["status"] == "completed", job
    assert (job["pages_crawled"], job["pages_failed"]) == (1, 0)
    assert job["progress"]["pages_crawled"] == 1
    res = client.get(f"/v1/jobs/{job['id']}/result?format=markdown", headers=org.headers)
    assert res.status_code == 200
    assert 'filename="result.md"' in res.headers["content-disposition"]
    assert res.text.startswith("# Article 5:")
    assert "```python" in res.text and "| Metric | Value |" in res.text
    assert "cookies" not in res.text and "Newsletter" not in res.text
    # Default format is the first export format; json is always available.
    assert client.get(f"/v1/jobs/{job['id']}/result", headers=org.headers).text == res.text
    (record,) = records(client, org, job["id"])
    assert record["status_code"] == 200 and record["rendered"] is False
    assert record["title"].startswith("Article 5:")
    assert record["fetched_at"].endswith("Z") and f"{site.base}/articles/4" in record["links"]
    bad = client.get(f"/v1/jobs/{job['id']}/result?format=html", headers=org.headers)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"


def test_full_site_crawl(client, org, site: GeneratedSite) -> None:  # type: ignore[no-untyped-def]
    canary_before = len(site.canary_hits)
    job = submit(client, org, url=f"{site.base}/", mode="full", max_pages=1000)
    job = wait_for_job(client, job["id"], org.headers, timeout=240)
    assert job["status"] == "completed", job
    pages = records(client, org, job["id"])
    problems = errors(client, org, job["id"])
    by_url = {p["url"]: p for p in problems}
    # Counters are exact: every discovered URL ended crawled, failed or skipped.
    skipped = [p for p in problems if p["status"] == "skipped"]
    failed = [p for p in problems if p["status"] == "failed"]
    assert job["pages_crawled"] == len(pages)
    assert job["pages_failed"] == len(failed)
    assert job["pages_discovered"] == len(pages) + len(problems)
    assert job["progress"]["pages_skipped"] == len(skipped)
    # Every article's content is there once (redirects and /dup/0 deduplicated by content).
    titles = [p["title"] for p in pages if p["title"].startswith("Article ")]
    assert sorted(int(t.split()[1].rstrip(":")) for t in titles) == list(range(site.pages))
    crawled = {p["url"] for p in pages}
    assert {f"{site.base}/orphan/{i}" for i in range(5)} <= crawled  # from the sitemap index
    js = [p for p in pages if "/js/" in p["url"]]
    assert len(js) == 5 and all(p["rendered"] for p in js)
    assert all("Rendered by JavaScript" in p["markdown"] for p in js)
    b = site.base
    assert by_url[f"{b}/status/404"]["status_code"] == 404
    assert by_url[f"{b}/status/404"]["reason"] == "http_error"
    assert by_url[f"{b}/status/500"]["status_code"] == 500
    assert by_url[f"{b}/loop/a"]["reason"] == "redirect_loop"
    assert by_url[f"{b}/redirect-private"]["reason"] == "unsafe_url"
    assert by_url[f"{b}/huge"]["reason"] == "too_large"
    assert by_url[f"{b}/files/report.pdf"]["reason"] == "unsupported_content_type"
    assert by_url[f"{b}/private/0"]["robots_blocked"] is True
    assert by_url[f"{b}/private/0"]["status"] == "skipped"
    dup = {f"{b}/dup/0", f"{b}/articles/0"}
    assert (
        len(dup & crawled) == 1 and by_url[(dup - crawled).pop()]["reason"] == "duplicate_content"
    )
    assert len(site.canary_hits) == canary_before  # nothing ever reached the private host
    assert not any("private/" in u for u in crawled)
    # The Markdown download: one document per page, Syttra's separator, crawl-{id}.md.
    md = client.get(f"/v1/jobs/{job['id']}/result?format=markdown", headers=org.headers)
    assert f'filename="crawl-{job["id"]}.md"' in md.headers["content-disposition"]
    assert md.text.count("\n\n---\n\n") >= len(pages) - 1
    # /pages walks the same records with a cursor.
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        r = client.get(f"/v1/jobs/{job['id']}/pages", params=params, headers=org.headers)
        seen += [p["url"] for p in r.json()["data"]]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    assert seen == [p["url"] for p in pages]


def test_max_pages_is_exact_and_depth_and_paths_apply(client, org, site: GeneratedSite) -> None:  # type: ignore[no-untyped-def]
    job = submit(client, org, url=f"{site.base}/list/0", mode="full", max_pages=17,
                 use_sitemap=False)  # fmt: skip
    job = wait_for_job(client, job["id"], org.headers, timeout=120)
    assert job["status"] == "completed" and job["pages_crawled"] == 17
    assert len(records(client, org, job["id"])) == 17

    job = submit(
        client,
        org,
        url=f"{site.base}/articles/10",
        mode="full",
        max_depth=1,
        use_sitemap=False,
        include_paths=["^/articles/"],
        exclude_paths=["/articles/11$"],
    )
    job = wait_for_job(client, job["id"], org.headers, timeout=120)
    urls = {r["url"] for r in records(client, org, job["id"])}
    expected = {f"{site.base}/articles/{i}" for i in (10, 9, 71, 84, 97, 110)}
    assert urls == expected, urls  # the start, its prev/related links; not /11, nothing deeper


def test_select_mode(client, org, site: GeneratedSite) -> None:  # type: ignore[no-untyped-def]
    urls = [f"{site.base}/articles/{i}" for i in (1, 2)] + [f"{site.base}/status/404"]
    job = submit(
        client, org, mode="select", urls=urls, export_formats=["markdown", "links", "text"]
    )
    job = wait_for_job(client, job["id"], org.headers, timeout=60)
    assert (job["pages_crawled"], job["pages_failed"], job["pages_discovered"]) == (2, 1, 3)
    links = client.get(f"/v1/jobs/{job['id']}/result?format=links", headers=org.headers)
    rows = [json.loads(line) for line in links.text.splitlines()]
    assert [sorted(r) for r in rows] == [["final_url", "links", "url"]] * 2
    text = client.get(f"/v1/jobs/{job['id']}/result?format=text", headers=org.headers).text
    assert "Article 1:" in text and "**" not in text


def test_screenshot_zip_and_render_always(client, org, site: GeneratedSite) -> None:  # type: ignore[no-untyped-def]
    job = submit(client, org, url=f"{site.base}/articles/3", render="always",
                 export_formats=["markdown", "screenshot", "html"])  # fmt: skip
    job = wait_for_job(client, job["id"], org.headers, timeout=90)
    assert job["status"] == "completed", job
    r = client.get(f"/v1/jobs/{job['id']}/result?format=screenshot", headers=org.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    (name,) = archive.namelist()
    assert name.endswith(".png") and archive.read(name).startswith(b"\x89PNG")
    (record,) = records(client, org, job["id"])
    assert record["rendered"] is True  # requested formats are in the JSON record too
    assert base64.b64decode(record["screenshot"]) == archive.read(name)
    assert "<h1>" in record["html"]


def test_cancel_keeps_finished_pages_and_stops_quickly(client, org) -> None:  # type: ignore[no-untyped-def]
    with GeneratedSite(pages=200, traps=False, crawl_delay=0.3) as slow:
        job = submit(client, org, url=f"{slow.base}/list/0", mode="full", max_pages=200)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            current = client.get(f"/v1/jobs/{job['id']}", headers=org.headers).json()
            if current["pages_crawled"] >= 3:
                break
            time.sleep(0.1)
        partial = client.get(f"/v1/jobs/{job['id']}/result?format=markdown", headers=org.headers)
        assert partial.status_code == 200 and partial.text  # pages so far, while running
        r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=org.headers)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        time.sleep(3)
        hits = sum(slow.hits.values())
        time.sleep(2)
        assert sum(slow.hits.values()) == hits  # fetching stopped within seconds
    final = client.get(f"/v1/jobs/{job['id']}", headers=org.headers).json()
    assert final["status"] == "cancelled" and 3 <= final["pages_crawled"] < 200
    kept = records(client, org, job["id"])
    assert len(kept) == final["pages_crawled"]


def test_python_submit(org, site: GeneratedSite, client) -> None:  # type: ignore[no-untyped-def]
    from tasks.crawl import crawl

    job_id = crawl.submit({"url": f"{site.base}/articles/8"}, org=org.name)
    job = wait_for_job(client, job_id, org.headers, timeout=60)
    assert job["status"] == "completed" and job["pages_crawled"] == 1


@pytest.mark.parametrize(
    ("body", "code", "loc"),
    [
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "unsafe_url", None),
        ({"url": "http://127.0.0.2:8080/"}, "unsafe_url", None),
        ({"url": "http://2130706433/"}, "unsafe_url", None),
        ({"mode": "select", "urls": ["http://10.0.0.1/"]}, "unsafe_url", None),
        ({"url": "ftp://example.com/"}, "validation_error", ["body", "url"]),
        ({"mode": "select"}, "validation_error", ["body"]),
        (
            {"url": "https://example.com/", "render": "sometimes"},
            "validation_error",
            ["body", "render"],
        ),
        (
            {"url": "https://example.com/", "include_paths": ["("]},
            "validation_error",
            ["body", "include_paths"],
        ),
        (
            {"url": "https://example.com/", "headers": {"Host": "x"}},
            "validation_error",
            ["body", "headers"],
        ),
        ({"url": "https://example.com/", "export_formats": ["pdf"]}, "validation_error", None),
        (
            {"url": "https://example.com/", "max_pages": 0},
            "validation_error",
            ["body", "max_pages"],
        ),
        ({"url": "https://example.com/", "include_tags": ["p[["]}, "validation_error", None),
    ],
)
def test_invalid_and_unsafe_requests(client, org, body, code, loc) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/v1/crawls", json=body, headers=org.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["request_id"].startswith("req_")
    if loc is not None:
        assert error["details"][0]["loc"][: len(loc)] == loc


def test_other_org_and_non_crawl_jobs_are_not_found(client, org, other_org, site) -> None:  # type: ignore[no-untyped-def]
    job = submit(client, org, url=f"{site.base}/articles/9")
    wait_for_job(client, job["id"], org.headers, timeout=60)
    for path in ("", "/result", "/pages", "/errors"):
        r = client.get(f"/v1/jobs/{job['id']}{path}", headers=other_org.headers)
        assert r.status_code == 404, path


def _unused() -> Iterator[None]:  # keeps typing imports honest
    yield


def test_crawl_with_no_page_fails_with_the_page_error(client, org, site: GeneratedSite) -> None:  # type: ignore[no-untyped-def]
    job = submit(client, org, url=f"{site.base}/status/404")
    job = wait_for_job(client, job["id"], org.headers, timeout=60)
    assert job["status"] == "failed" and job["error"]["code"] == "http_error"
    assert "HTTP 404" in job["error"]["message"] and job["pages_failed"] == 1
    (problem,) = errors(client, org, job["id"])
    assert problem["status_code"] == 404


def test_max_pages_above_the_plan_cap_is_refused(client, site: GeneratedSite) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_org

    free = make_org(plan="free")
    body = {"url": f"{site.base}/", "mode": "full", "max_pages": 100_000}
    r = client.post("/v1/crawls", json=body, headers=free.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error" and "cap" in error["message"]
    assert error["details"][0]["loc"] == ["body", "max_pages"]


@pytest.mark.parametrize("render", ["never", "always"])
def test_custom_headers_reach_the_site(client, org, site: GeneratedSite, render: str) -> None:  # type: ignore[no-untyped-def]
    job = submit(
        client,
        org,
        url=f"{site.base}/echo-headers",
        render=render,
        headers={"Cookie": "session=abc123", "X-Crawl-Test": "yes"},
    )
    job = wait_for_job(client, job["id"], org.headers, timeout=60)
    assert job["status"] == "completed", job
    md = client.get(f"/v1/jobs/{job['id']}/result?format=markdown", headers=org.headers).text
    assert "| cookie | session=abc123 |" in md and "| x-crawl-test | yes |" in md
    assert "| user-agent | ConveyorBot/" in md
