"""``GET /v1/jobs/{id}`` is answered by ``api.routers.jobs.PollFastPath`` before FastAPI's
routing: the same body as the route's, the contract middlewares still apply (request id, rate
limit headers, metrics by route template), and everything but a 200 is the route's answer."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import OrgKey


def _polls(route: str, status: str) -> float:
    from monitoring.metrics import HTTP_REQUESTS

    return HTTP_REQUESTS.labels(route, "GET", status)._value.get()  # type: ignore[no-any-return]


def test_the_fast_path_answers_as_the_route_does(
    client: Any, org: OrgKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.routers import jobs

    job = _quiet_job(org)
    calls: list[str] = []
    original = jobs.poll_job

    def spy(token: str, job_id: str, request: Any) -> bytes:
        calls.append(type(request).__name__)
        return original(token, job_id, request)

    before = _polls("/v1/jobs/{job_id}", "200")
    monkeypatch.setattr(jobs, "poll_job", spy)
    fast = client.get(f"/v1/jobs/{job['id']}", headers=org.headers)
    # the route itself (FastAPI's Request) answers the same poll when the fast path stands aside
    monkeypatch.setattr(jobs, "_POLL_PATH", re.compile(r"^$"))
    routed = client.get(f"/v1/jobs/{job['id']}", headers=org.headers)
    assert calls == ["HTTPConnection", "Request"]
    assert fast.status_code == routed.status_code == 200
    assert fast.json() == routed.json() and fast.json()["id"] == job["id"]
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert fast.headers["X-Request-ID"].startswith("req_")
    assert int(fast.headers["X-RateLimit-Remaining"]) > int(routed.headers["X-RateLimit-Remaining"])
    assert _polls("/v1/jobs/{job_id}", "200") == before + 2


def _quiet_job(org: OrgKey) -> dict[str, str]:
    """A job row no worker will take (never sent to the broker): it stays as it is."""
    from store import jobs as job_store
    from store.db import session_scope

    with session_scope() as session:
        row = job_store.insert_job(
            session, org_id=org.org_id, kind="diagnostics", input={"seconds": 0, "steps": 1}
        )
        return {"id": row.id}


def test_everything_but_a_200_is_the_routes_answer(
    client: Any, org: OrgKey, other_org: OrgKey
) -> None:
    url = f"/v1/jobs/{_quiet_job(org)['id']}"
    missing = client.get(url, headers=other_org.headers)  # another organisation's job
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    unknown = client.get(url, headers={"Authorization": "Bearer cvy_live_unknown"})
    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "unauthorized"
    assert client.get(url).status_code == 401
    # a revoked key fails on its very next poll (no cache between the key and the answer)
    made = client.post("/v1/keys", json={"name": "poller"}, headers=org.headers).json()
    poller = {"Authorization": f"Bearer {made['key']}"}
    assert client.get(url, headers=poller).status_code == 200
    assert client.delete(f"/v1/keys/{made['id']}", headers=org.headers).status_code == 204
    assert client.get(url, headers=poller).status_code == 401
    too_long = client.get(f"/v1/jobs/{'x' * 65}", headers=org.headers)
    assert too_long.status_code == 404
