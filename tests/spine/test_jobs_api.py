"""The jobs API end to end with a real Celery worker (thread), PostgreSQL and Redis."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from common.timeutil import utcnow
from store.db import session_scope
from store.models import Job
from tests.conftest import OrgKey
from tests.helpers import stored_job, wait_for_job


def submit(client: Any, org: OrgKey, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/diagnostics/sleep", json=body, headers=org.headers)
    assert response.status_code == 202, response.text
    return dict(response.json())


def test_submit_poll_result(client: Any, org: OrgKey, worker: object) -> None:
    job = submit(client, org, seconds=0.2, steps=4)
    assert job["status"] == "queued" and job["links"]["self"] == f"/v1/jobs/{job['id']}"
    done = wait_for_job(client, job["id"], org.headers)
    assert done["status"] == "completed", done
    assert done["progress"] == {"steps_total": 4, "steps_done": 4}
    assert done["attempts"] == 1
    assert done["completed_at"].endswith("Z") and done["expires_at"].endswith("Z")
    result = client.get(f"/v1/jobs/{job['id']}/result", headers=org.headers)
    assert result.status_code == 200
    assert result.json()["steps"] == 4


def test_failed_job_records_error(client: Any, org: OrgKey, worker: object) -> None:
    job = submit(client, org, seconds=0, fail=True)
    done = wait_for_job(client, job["id"], org.headers)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "diagnostics_failure"


def test_cancel_running_job_stops_it(client: Any, org: OrgKey, worker: object) -> None:
    job = submit(client, org, seconds=20, steps=200)
    wait_for_job(client, job["id"], org.headers, statuses=("running",))
    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=org.headers)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    # The worker stops within a step and never resurrects the job.
    import time

    time.sleep(0.5)
    again = client.get(f"/v1/jobs/{job['id']}", headers=org.headers).json()
    assert again["status"] == "cancelled"
    steps = again["progress"].get("steps_done", 0)
    time.sleep(0.5)
    assert (
        client.get(f"/v1/jobs/{job['id']}", headers=org.headers)
        .json()["progress"]
        .get("steps_done", 0)
        == steps
    )
    # Idempotent: cancel and delete again.
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=org.headers).status_code == 200
    assert client.delete(f"/v1/jobs/{job['id']}", headers=org.headers).status_code == 204
    assert client.delete(f"/v1/jobs/{job['id']}", headers=org.headers).status_code == 204


def test_result_not_ready_then_gone_after_expiry(client: Any, org: OrgKey, worker: object) -> None:
    job = submit(client, org, seconds=1, steps=10)
    early = client.get(f"/v1/jobs/{job['id']}/result", headers=org.headers)
    assert early.status_code == 409 and early.json()["error"]["code"] == "not_ready"
    wait_for_job(client, job["id"], org.headers)
    assert client.get(f"/v1/jobs/{job['id']}/result", headers=org.headers).status_code == 200
    # Move the expiry into the past and run the beat task for real.
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    from tasks.maintenance import expire_results

    assert expire_results() >= 1
    gone = client.get(f"/v1/jobs/{job['id']}/result", headers=org.headers)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "gone"
    # Metadata stays.
    assert client.get(f"/v1/jobs/{job['id']}", headers=org.headers).status_code == 200


def test_delete_finished_job_deletes_result(client: Any, org: OrgKey, worker: object) -> None:
    job = submit(client, org, seconds=0)
    wait_for_job(client, job["id"], org.headers)
    assert client.delete(f"/v1/jobs/{job['id']}", headers=org.headers).status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}/result", headers=org.headers).status_code == 410
    assert client.get(f"/v1/jobs/{job['id']}", headers=org.headers).json()["status"] == "completed"


def test_tenant_isolation_on_every_jobs_route(
    client: Any, org: OrgKey, other_org: OrgKey, worker: object
) -> None:
    job = submit(client, org, seconds=0)
    wait_for_job(client, job["id"], org.headers)
    jid = job["id"]
    for method, path in [
        ("GET", f"/v1/jobs/{jid}"),
        ("GET", f"/v1/jobs/{jid}/result"),
        ("POST", f"/v1/jobs/{jid}/cancel"),
        ("DELETE", f"/v1/jobs/{jid}"),
    ]:
        response = client.request(method, path, headers=other_org.headers)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    listing = client.get("/v1/jobs", headers=other_org.headers).json()
    assert all(item["id"] != jid for item in listing["data"])
    # The owner still sees the job and its result intact.
    assert client.get(f"/v1/jobs/{jid}/result", headers=org.headers).status_code == 200


def test_list_pagination_filters_and_sort(client: Any, org: OrgKey) -> None:

    with session_scope() as session:
        base = utcnow() - timedelta(hours=1)
        for i in range(45):
            job = stored_job(session, org_id=org.org_id, kind="diagnostics", input={})
            job.created_at = base + timedelta(seconds=i)
            job.status = "completed" if i % 3 == 0 else "queued"
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params, headers=org.headers).json()
        seen += [item["id"] for item in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 45
    completed = client.get(
        "/v1/jobs", params={"status": "completed", "limit": 100}, headers=org.headers
    ).json()["data"]
    assert len(completed) == 15 and {j["status"] for j in completed} == {"completed"}
    both = client.get(
        "/v1/jobs", params={"status": "completed,queued", "limit": 100}, headers=org.headers
    ).json()["data"]
    assert [j["created_at"] for j in both] == sorted((j["created_at"] for j in both), reverse=True)
    oldest_first = client.get(
        "/v1/jobs", params={"sort": "created_at", "limit": 5}, headers=org.headers
    ).json()["data"]
    assert oldest_first[0]["created_at"] < oldest_first[-1]["created_at"]
    bad = client.get("/v1/jobs", params={"status": "nope"}, headers=org.headers)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    assert client.get("/v1/jobs", params={"limit": 101}, headers=org.headers).status_code == 422
    assert client.get("/v1/jobs", params={"cursor": "!!"}, headers=org.headers).status_code == 422


def test_errors_use_the_envelope(client: Any, org: OrgKey) -> None:
    for response, status, code in [
        (client.get("/v1/nowhere"), 404, "not_found"),
        (client.get("/v1/jobs"), 401, "unauthorized"),
        (client.put("/v1/jobs", headers=org.headers), 405, "method_not_allowed"),
        (
            client.post(
                "/v1/diagnostics/sleep",
                content=b"{nope",
                headers={**org.headers, "Content-Type": "application/json"},
            ),
            400,
            "invalid_json",
        ),
        (
            client.post("/v1/diagnostics/sleep", json={"seconds": -1}, headers=org.headers),
            422,
            "validation_error",
        ),
    ]:
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert body["code"] == code
        assert body["request_id"].startswith("req_")
        assert response.headers["X-Request-ID"] == body["request_id"]


def test_health(client: Any) -> None:
    response = client.get("/v1/health")
    assert response.status_code == 200
    assert response.json()["store"] == "ok" and response.json()["broker"] == "ok"


def test_python_submission_is_seen_over_rest(client: Any, org: OrgKey, worker: object) -> None:
    from tasks.diagnostics import sleep

    job_id = sleep.submit({"seconds": 0.1}, org=org.name)
    done = wait_for_job(client, job_id, org.headers)
    assert done["status"] == "completed" and done["kind"] == "diagnostics"
    listed = client.get("/v1/jobs", params={"kind": "diagnostics"}, headers=org.headers).json()
    assert job_id in [j["id"] for j in listed["data"]]
