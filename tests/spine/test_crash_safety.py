"""Crash safety with real ``celery worker`` subprocesses: a worker SIGKILLed mid-job gets its
job redelivered; a job that kills its worker every time fails with ``worker_lost`` after the
cap; cancel racing completion has exactly one winner."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from store import jobs as job_store
from store.db import session_scope
from store.jobs import JobStatus
from tests.conftest import OrgKey
from tests.helpers import WorkerProcess, stored_job, wait_for_job

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def private_broker(migrated: dict[str, object]) -> Iterator[str]:
    """A Redis database of these tests' own, so the session's in-thread worker (which consumes
    every queue of the main broker) can never take the jobs meant for the worker we kill."""
    from tests.conftest import REDIS_BASE, _claim_redis_db

    db = _claim_redis_db()
    url = f"{REDIS_BASE}/{db}"
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()
    redis.Redis.from_url(f"{REDIS_BASE}/0").delete(f"conveyor:test-db-lock:{db}")


def submit_on(broker_url: str, org: OrgKey, **input: Any) -> dict[str, Any]:
    """Create the job row, then enqueue it on ``broker_url`` (what tasks.runner.enqueue does)."""
    from config import Settings
    from diagnostics.schemas import SleepInput
    from workers.app import create_celery

    with session_scope() as session:
        job = job_store.insert_job(
            session,
            org_id=org.org_id,
            kind="diagnostics",
            input=SleepInput.model_validate(input).model_dump(mode="json", exclude={"webhook"}),
        )
    app = create_celery(Settings(broker_url=broker_url), set_as_current=False)
    app.send_task("diagnostics.run", args=[job.id], queue="maintenance")
    app.close()
    return {"id": job.id}


@pytest.fixture
def prefork_worker(private_broker: str) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(
        ["maintenance"],
        pool="prefork",
        concurrency=1,
        env={"CONVEYOR_BROKER_URL": private_broker},
    )
    yield worker
    worker.stop()


def test_killed_pool_process_redelivers_and_completes(
    client: Any, org: OrgKey, prefork_worker: WorkerProcess, private_broker: str
) -> None:
    job = submit_on(private_broker, org, seconds=3, steps=30)
    wait_for_job(client, job["id"], org.headers, statuses=("running",), timeout=60)
    time.sleep(0.3)
    children = prefork_worker.children()
    assert children, "the prefork worker has no pool process"
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    done = wait_for_job(client, job["id"], org.headers, timeout=60)
    assert done["status"] == "completed", done
    assert done["attempts"] == 2


def test_poison_job_fails_with_worker_lost_after_cap(
    client: Any, org: OrgKey, prefork_worker: WorkerProcess, private_broker: str
) -> None:
    job = submit_on(private_broker, org, seconds=0.4, steps=4, crash_attempts=100)
    done = wait_for_job(client, job["id"], org.headers, timeout=90)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "worker_lost"
    assert done["attempts"] == 3
    # The worker survived its poison job and still takes work.
    ok = submit_on(private_broker, org, seconds=0)
    assert wait_for_job(client, ok["id"], org.headers, timeout=60)["status"] == "completed"


def test_whole_worker_sigkilled_job_redelivered_to_a_new_worker(
    client: Any, org: OrgKey, private_broker: str
) -> None:
    env = {"CONVEYOR_VISIBILITY_TIMEOUT": "3", "CONVEYOR_BROKER_URL": private_broker}
    first = WorkerProcess(["maintenance"], concurrency=1, env=env)
    try:
        job = submit_on(private_broker, org, seconds=3, steps=30)
        wait_for_job(client, job["id"], org.headers, statuses=("running",), timeout=60)
        first.kill_all()
    finally:
        first.stop()
    assert client.get(f"/v1/jobs/{job['id']}", headers=org.headers).json()["status"] == "running"
    second = WorkerProcess(["maintenance"], concurrency=1, env=env)
    try:
        done = wait_for_job(client, job["id"], org.headers, timeout=90)
    finally:
        second.stop()
    assert done["status"] == "completed", done
    assert done["attempts"] == 2


def test_500_cancel_vs_complete_races_have_one_winner(org: OrgKey) -> None:
    with session_scope() as session:
        ids = []
        for _ in range(500):
            job = stored_job(session, org_id=org.org_id, kind="diagnostics", input={})
            job.status = JobStatus.RUNNING
            ids.append(job.id)
    barrier = threading.Barrier(2)
    wins: dict[str, list[str]] = {job_id: [] for job_id in ids}

    def race(job_id: str, target: JobStatus) -> None:
        barrier.wait()
        with session_scope() as session:
            if job_store.transition(session, job_id, to=target, from_=[JobStatus.RUNNING]):
                wins[job_id].append(target.value)

    for job_id in ids:
        threads = [
            threading.Thread(target=race, args=(job_id, JobStatus.COMPLETED)),
            threading.Thread(target=race, args=(job_id, JobStatus.CANCELLED)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with session_scope() as session:
        for job_id in ids:
            status = job_store.status_of(session, job_id)
            assert len(wins[job_id]) == 1, (job_id, wins[job_id])
            assert status == wins[job_id][0]
    outcomes = {w[0] for w in wins.values()}
    assert outcomes == {"completed", "cancelled"}, "both sides should win some races"


def test_cancel_racing_a_finishing_worker_over_the_api(
    client: Any, org: OrgKey, worker: object
) -> None:
    """Cancels land while real jobs finish: every job ends in exactly one terminal state."""
    jobs = [
        client.post(
            "/v1/diagnostics/sleep", json={"seconds": 0.05, "steps": 1}, headers=org.headers
        ).json()["id"]
        for _ in range(40)
    ]
    for i, job_id in enumerate(jobs):
        if i % 2 == 0:
            time.sleep(0.01)
        client.post(f"/v1/jobs/{job_id}/cancel", headers=org.headers)
    for job_id in jobs:
        done = wait_for_job(client, job_id, org.headers)
        assert done["status"] in ("completed", "cancelled")
        result = client.get(f"/v1/jobs/{job_id}/result", headers=org.headers)
        if done["status"] == "completed":
            assert result.status_code == 200
        else:
            assert result.status_code in (404, 200)
