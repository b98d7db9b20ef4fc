"""Idempotency keys (also under concurrent duplicates) and 402 quotas."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import func, select

from store.db import session_scope
from store.models import ApiKey, Job
from tests.conftest import OrgKey, make_org


def _count_keys(org_id: str) -> int:
    with session_scope() as session:
        return int(
            session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.org_id == org_id))
            or 0
        )


def test_same_key_same_body_replays_without_creating_twice(client: Any, org: OrgKey) -> None:
    headers = {**org.headers, "Idempotency-Key": "create-key-1"}
    first = client.post("/v1/keys", json={"name": "a"}, headers=headers)
    second = client.post("/v1/keys", json={"name": "a"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert _count_keys(org.org_id) == 2  # the fixture's key + one created
    conflict = client.post("/v1/keys", json={"name": "b"}, headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "conflict"


def test_keys_are_scoped_per_organisation(client: Any, org: OrgKey, other_org: OrgKey) -> None:
    key = {"Idempotency-Key": "shared-name"}
    a = client.post("/v1/diagnostics/sleep", json={"seconds": 0}, headers={**org.headers, **key})
    b = client.post(
        "/v1/diagnostics/sleep", json={"seconds": 0}, headers={**other_org.headers, **key}
    )
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


def test_concurrent_duplicates_create_one_job(client: Any, org: OrgKey) -> None:
    headers = {**org.headers, "Idempotency-Key": "burst-1"}
    body = {"seconds": 0, "steps": 1}

    def post(_: int) -> Any:
        return client.post("/v1/diagnostics/sleep", json=body, headers=headers)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    ok = [r for r in responses if r.status_code == 202]
    assert ok, [r.status_code for r in responses]
    assert {r.json()["id"] for r in ok} == {ok[0].json()["id"]}
    assert all(r.status_code in (202, 409) for r in responses)
    with session_scope() as session:
        query = select(func.count()).select_from(Job).where(Job.org_id == org.org_id)
        count = session.scalar(query)
    assert count == 1


def test_over_quota_is_402_saying_what_was_used(client: Any, migrated: Any) -> None:
    from plans import service as plans
    from plans.schemas import PlanLimits

    with session_scope() as session:
        plans.define_plan(
            session,
            PlanLimits(
                name="tiny",
                pages_per_month=10,
                concurrent_jobs=2,
                gpu_seconds_per_month=5,
                max_pages_per_crawl=10,
                read_per_minute=100,
                write_per_minute=100,
            ),
        )
    tiny = make_org(plan="tiny")
    for _ in range(2):
        ok = client.post("/v1/diagnostics/sleep", json={"seconds": 30}, headers=tiny.headers)
        assert ok.status_code == 202
    over = client.post("/v1/diagnostics/sleep", json={"seconds": 30}, headers=tiny.headers)
    assert over.status_code == 402
    error = over.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert "2 / 2 concurrent jobs" in error["message"]
    assert error["details"] == {"quota": "concurrent_jobs", "used": 2, "limit": 2}
    usage = client.get("/v1/usage", headers=tiny.headers).json()
    assert usage["concurrent_jobs"] == {"used": 2, "limit": 2, "remaining": 0}
    # Provisioning counts against the same quota, and nothing is created when it is refused.
    provision = client.post(
        "/v1/resources",
        json={"type": "volume", "tier": "shared", "name": "over-quota"},
        headers=tiny.headers,
    )
    assert provision.status_code == 402, provision.text
    assert client.get("/v1/resources", headers=tiny.headers).json()["data"] == []

    with session_scope() as session:
        plans.record_usage(session, tiny.org_id, "gpu_seconds", 7)
        for job in session.scalars(select(Job).where(Job.org_id == tiny.org_id)):
            job.status = "cancelled"
    from common.errors import QuotaExceeded

    with session_scope() as session:
        try:
            plans.enforce_quota(session, tiny.org_id, "inference", {})
        except QuotaExceeded as exc:
            assert exc.message == "You've used 7 / 5 GPU seconds this month."
        else:
            raise AssertionError("no 402 for GPU seconds")
    assert json.dumps(usage)
