"""The submit-time SSRF guard runs on every creation path: REST and Python's ``submit`` alike."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from common.errors import UnsafeURL
from store.db import session_scope
from store.models import Job

METADATA = "http://169.254.169.254/latest/meta-data/"


def _jobs_of(org_id: str) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(Job.org_id == org_id)) or 0)


def test_python_submit_refuses_a_metadata_address_like_rest(client: Any, org: Any) -> None:
    from tasks.crawl import crawl

    rest = client.post("/v1/crawls", json={"url": METADATA}, headers=org.headers)
    assert rest.status_code == 422 and rest.json()["error"]["code"] == "unsafe_url"
    with pytest.raises(UnsafeURL):
        crawl.submit({"url": METADATA}, org=org.name)
    with pytest.raises(UnsafeURL):
        crawl.submit({"mode": "select", "urls": ["https://example.com/", METADATA]}, org=org.name)
    assert _jobs_of(org.org_id) == 0
