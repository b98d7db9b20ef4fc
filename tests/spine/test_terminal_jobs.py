"""A terminal job never changes again: progress, result rows and events written after the
transition that ended it are discarded (the store's writes carry the same ``status = 'running'``
condition as that compare-and-set); a deleted result shows as gone on the job itself; list
filters validate alike; malformed JSON has its own code."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from common.timeutil import utcnow
from store import jobs as job_store
from store.db import session_scope
from store.jobs import JobStatus
from store.models import Job, ResultItem
from tests.conftest import OrgKey
from tests.helpers import wait_for_job


def _rows(job_id: str) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(ResultItem.job_id == job_id)) or 0)


def test_store_writes_stop_at_the_terminal_transition(org: OrgKey) -> None:
    with session_scope() as session:
        job = job_store.insert_job(session, org_id=org.org_id, kind="diagnostics", input={})
    with session_scope() as session:
        job_store.transition(session, job.id, to=JobStatus.RUNNING, from_=[JobStatus.QUEUED])
        assert job_store.set_progress(session, job.id, {"steps_done": 1})
        assert job_store.increment_progress(session, job.id, {"pages": 2}) == {
            "steps_done": 1,
            "pages": 2,
        }
        assert job_store.add_result_item(session, job.id, seq=0, data={"n": 0})
    with session_scope() as session:
        assert job_store.transition(
            session, job.id, to=JobStatus.CANCELLED, from_=[JobStatus.RUNNING]
        )
    with session_scope() as session:  # work finishing after the cancel
        assert job_store.set_progress(session, job.id, {"steps_done": 2}) is False
        assert job_store.increment_progress(session, job.id, {"pages": 1}) is None
        assert job_store.add_result_item(session, job.id, seq=1, data={"n": 1}) is False
    with session_scope() as session:
        stored = session.get(Job, job.id)
        assert stored is not None and stored.progress == {"steps_done": 1, "pages": 2}
    assert _rows(job.id) == 1


def test_a_cancelled_job_keeps_the_counters_it_had(
    client: Any, org: OrgKey, worker: object
) -> None:
    # Two steps of 1.5 s: the first step is in flight when the job is cancelled.
    body = {"seconds": 3, "steps": 2}
    job = client.post("/v1/diagnostics/sleep", json=body, headers=org.headers).json()
    wait_for_job(client, job["id"], org.headers, statuses=("running",))
    time.sleep(0.5)
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=org.headers).json()
    assert cancelled["status"] == "cancelled"
    time.sleep(2.5)  # the step finishes and the worker stops
    later = client.get(f"/v1/jobs/{job['id']}", headers=org.headers).json()
    assert later["progress"] == cancelled["progress"] == {}
    assert later["completed_at"] == cancelled["completed_at"]
    assert _rows(job["id"]) == 0


def test_deleting_a_finished_jobs_result_shows_on_the_job(
    client: Any, org: OrgKey, worker: object
) -> None:
    job = client.post("/v1/diagnostics/sleep", json={"seconds": 0}, headers=org.headers).json()
    done = wait_for_job(client, job["id"], org.headers)
    assert done["links"]["result"] == f"/v1/jobs/{job['id']}/result"
    assert done["expires_at"] > done["completed_at"]
    before = utcnow()
    assert client.delete(f"/v1/jobs/{job['id']}", headers=org.headers).status_code == 204
    gone = client.get(f"/v1/jobs/{job['id']}", headers=org.headers).json()
    assert "result" not in gone["links"] and gone["links"]["self"] == f"/v1/jobs/{job['id']}"
    deleted_at = datetime.fromisoformat(gone["expires_at"].replace("Z", "+00:00"))
    assert before <= deleted_at <= utcnow()
    assert client.get(f"/v1/jobs/{job['id']}/result", headers=org.headers).status_code == 410
    listed = client.get("/v1/jobs?kind=diagnostics", headers=org.headers).json()["data"]
    assert [j["links"] for j in listed if j["id"] == job["id"]] == [gone["links"]]


def test_filters_validate_alike(client: Any, org: OrgKey) -> None:
    for query, name in (("status=bogus", "status"), ("kind=bogus", "kind")):
        response = client.get(f"/v1/jobs?{query}", headers=org.headers)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_error" and error["details"][0]["loc"] == [
            "query",
            name,
        ]
    kinds = client.get("/v1/jobs?kind=bogus", headers=org.headers).json()["error"]["message"]
    assert "crawl" in kinds and "diagnostics" in kinds and "inference" in kinds
    assert client.get("/v1/jobs?kind=crawl", headers=org.headers).status_code == 200


def test_malformed_json_is_400_invalid_json(client: Any, org: OrgKey) -> None:
    response = client.post(
        "/v1/crawls",
        content=b'{"url": "https://example.com/",',
        headers={**org.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
