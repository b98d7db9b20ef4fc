"""A cancelled crawl is frozen: pages in flight when it was cancelled are discarded, so its
counters, result rows and ``/errors`` stay what the cancel answered."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.sites.site import GeneratedSite

pytestmark = pytest.mark.usefixtures("crawl_settings", "worker")

COUNTERS = ("pages_discovered", "pages_crawled", "pages_failed")


def test_pages_in_flight_at_cancel_are_not_counted(client: Any, org: Any) -> None:
    # A page every 0.3 s (robots crawl-delay) and a cancel check every second: pages finish
    # between the cancel and the worker noticing it.
    with GeneratedSite(pages=200, traps=False, crawl_delay=0.3) as slow:
        r = client.post(
            "/v1/crawls",
            json={"url": f"{slow.base}/list/0", "mode": "full", "max_pages": 200},
            headers=org.headers,
        )
        job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            current = client.get(f"/v1/jobs/{job_id}", headers=org.headers).json()
            if current["pages_crawled"] >= 3:
                break
            time.sleep(0.05)
        cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=org.headers).json()
        assert cancelled["status"] == "cancelled"
        time.sleep(3)  # pages in flight finish; the worker stops
        later = client.get(f"/v1/jobs/{job_id}", headers=org.headers).json()
        assert [later[c] for c in COUNTERS] == [cancelled[c] for c in COUNTERS]
        assert later["progress"] == cancelled["progress"]
        pages = client.get(f"/v1/jobs/{job_id}/result?format=json", headers=org.headers)
        records = [json.loads(line) for line in pages.text.splitlines()]
        assert len(records) == cancelled["pages_crawled"]
