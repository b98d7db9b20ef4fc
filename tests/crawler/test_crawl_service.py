"""Crawl service rules: per-host politeness, and crawl results expiring (410) like any job's."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from common.timeutil import utcnow
from crawler.service import _Politeness
from store.db import session_scope
from store.models import Job
from tests.helpers import wait_for_job
from tests.sites.site import GeneratedSite


def test_per_host_delay_and_cap() -> None:
    async def scenario() -> list[float]:
        polite = _Politeness(per_host=8)
        started = time.monotonic()
        stamps: list[float] = []

        async def hit(host: str) -> None:
            sem = await polite.wait(host, 0.2)
            stamps.append(time.monotonic() - started)
            sem.release()

        await asyncio.gather(hit("a.test"), hit("a.test"), hit("a.test"), hit("b.test"))
        return sorted(stamps)

    stamps = asyncio.run(scenario())
    assert stamps[0] < 0.1 and stamps[1] < 0.1  # a.test's first and b.test's first at once
    assert stamps[2] >= 0.19 and stamps[3] >= 0.39  # a.test's next ones spaced by the delay


@pytest.mark.usefixtures("crawl_settings", "worker")
def test_expired_crawl_result_is_gone(client: Any, org: Any, site: GeneratedSite) -> None:
    r = client.post("/v1/crawls", json={"url": f"{site.base}/articles/2"}, headers=org.headers)
    job = wait_for_job(client, r.json()["id"], org.headers, timeout=60)
    assert job["status"] == "completed" and job["expires_at"].endswith("Z")
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == job["id"]).values(expires_at=utcnow() - timedelta(1))
        )
    for path in ("/result?format=markdown", "/result?format=json", "/pages"):
        gone = client.get(f"/v1/jobs/{job['id']}{path}", headers=org.headers)
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "gone", path
    assert client.delete(f"/v1/jobs/{job['id']}", headers=org.headers).status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}/errors", headers=org.headers).status_code == 200
