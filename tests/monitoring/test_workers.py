"""Real ``celery worker`` subprocesses: heartbeats make the runner list (a SIGKILLed worker is
offline within 30 s), and a worker SIGTERMed mid-job (a Kubernetes rollout) loses nothing and
never finishes a job twice."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from monitoring import service
from store.db import session_scope
from store.models import ResultItem
from tests.conftest import OrgKey
from tests.helpers import WorkerProcess, wait_for_job
from tests.spine.test_crash_safety import private_broker, submit_on

pytestmark = pytest.mark.e2e
__all__ = ["private_broker"]  # the fixture, shared with the crash-safety tests

# A queue no job uses: the worker under test announces itself without taking anyone's jobs.
IDLE_QUEUE = "monitoring-test"


def runner(name_part: str) -> dict[str, Any] | None:
    for item in service.runners_report().runners:
        if name_part in item.name:
            return item.model_dump()
    return None


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} not seen within {timeout} s")


def _job_on_queue(org: OrgKey, queue: str, **input: Any) -> str:
    """A diagnostics job whose message goes to ``queue`` (not its kind's usual queue)."""
    from diagnostics.schemas import SleepInput
    from store import jobs as job_store
    from workers.app import celery_app

    with session_scope() as session:
        job = job_store.insert_job(
            session,
            org_id=org.org_id,
            kind="diagnostics",
            input=SleepInput.model_validate(input).model_dump(mode="json", exclude={"webhook"}),
        )
    celery_app.send_task("diagnostics.run", args=[job.id], queue=queue)
    return str(job.id)


def test_heartbeats_list_a_worker_and_sigkill_turns_it_offline(client: Any, org: OrgKey) -> None:
    worker = WorkerProcess(
        [IDLE_QUEUE], concurrency=2, env={"CONVEYOR_HEARTBEAT_SECONDS": "1"}, name=None
    )
    tag = worker.name.split("@")[0]
    try:
        seen = wait_until(lambda: runner(tag), 60, "the worker's heartbeat")
        assert seen["status"] == "idle"
        assert seen["queues"] == [IDLE_QUEUE]
        assert seen["concurrency"] == 2
        response = client.get("/v1/health/runners", headers=org.headers)
        assert response.status_code == 200
        body = response.json()
        assert any(tag in r["name"] for r in body["runners"])
        assert body["summary"]["idle"] >= 1
        # A running job makes it busy (the main process counts its pool's active requests).
        job = _job_on_queue(org, IDLE_QUEUE, seconds=4, steps=40)
        wait_for_job(client, job, org.headers, statuses=("running",), timeout=60)
        busy = wait_until(
            lambda: (runner(tag) or {}).get("status") == "busy" and runner(tag), 10, "busy"
        )
        assert busy["active"] == 1
        worker.kill_all()
        killed_at = time.monotonic()
        wait_until(
            lambda: (runner(tag) or {}).get("status") == "offline", 30, "offline after SIGKILL"
        )
        assert time.monotonic() - killed_at <= 30
        # Leave nothing running behind (the killed worker's message waits in the unacked set).
        assert client.post(f"/v1/jobs/{job}/cancel", headers=org.headers).status_code == 200
    finally:
        worker.stop()


def test_a_stopped_worker_is_offline_at_once() -> None:
    worker = WorkerProcess([IDLE_QUEUE], concurrency=1, env={"CONVEYOR_HEARTBEAT_SECONDS": "1"})
    tag = worker.name.split("@")[0]
    try:
        wait_until(lambda: runner(tag), 60, "the worker's heartbeat")
    finally:
        worker.stop()  # SIGTERM: a warm shutdown says goodbye
    assert (runner(tag) or {}).get("status") == "offline"


def _result_rows(job_id: str) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(ResultItem.job_id == job_id)) or 0)


def test_sigterm_mid_job_finishes_the_job_once(
    client: Any, org: OrgKey, private_broker: str
) -> None:
    """SIGTERM (what Kubernetes sends first) starts Celery's warm shutdown: the running job
    completes, the worker exits 0, and the job ran once."""
    worker = WorkerProcess(
        ["maintenance"], concurrency=1, env={"CONVEYOR_BROKER_URL": private_broker}
    )
    try:
        job = submit_on(private_broker, org, seconds=2, steps=20)
        wait_for_job(client, job["id"], org.headers, statuses=("running",), timeout=60)
        os.kill(worker.proc.pid, signal.SIGTERM)  # the main process, as the kubelet does
        assert worker.proc.wait(timeout=60) == 0
        done = client.get(f"/v1/jobs/{job['id']}", headers=org.headers).json()
    finally:
        worker.stop()
    assert done["status"] == "completed", done
    assert done["attempts"] == 1
    assert _result_rows(job["id"]) == 1


def test_sigterm_then_sigkill_past_the_grace_period_redelivers_once(
    client: Any, org: OrgKey, private_broker: str
) -> None:
    """A job longer than the grace period: SIGTERM, then SIGKILL (the grace period ran out).
    Acks late keep the message; the next worker completes the job, exactly once."""
    env = {"CONVEYOR_VISIBILITY_TIMEOUT": "3", "CONVEYOR_BROKER_URL": private_broker}
    first = WorkerProcess(["maintenance"], concurrency=1, env=env)
    try:
        job = submit_on(private_broker, org, seconds=3, steps=30)
        wait_for_job(client, job["id"], org.headers, statuses=("running",), timeout=60)
        os.kill(first.proc.pid, signal.SIGTERM)
        time.sleep(0.5)  # the grace period (short here) runs out mid-job
        assert first.proc.poll() is None, "warm shutdown waits for the running job"
        first.kill_all()
    finally:
        first.stop()
    assert client.get(f"/v1/jobs/{job['id']}", headers=org.headers).json()["status"] == "running"
    second = WorkerProcess(["maintenance"], concurrency=1, env=env)
    try:
        done = wait_for_job(client, job["id"], org.headers, timeout=90)
        time.sleep(4)  # past another visibility timeout: no second delivery finishes it again
        again = client.get(f"/v1/jobs/{job['id']}", headers=org.headers).json()
    finally:
        second.stop()
    assert done["status"] == "completed", done
    assert done["attempts"] == 2
    assert again["completed_at"] == done["completed_at"]
    assert _result_rows(job["id"]) == 1


def test_prefork_children_add_their_job_metrics_up(
    client: Any, org: OrgKey, private_broker: str
) -> None:
    """Jobs run by two prefork children reach the shared totals that GET /metrics reads (the
    worker's broker is private; its monitoring Redis is the session's)."""
    from config import get_settings
    from monitoring.repository import read_worker_metrics

    done_key = ("conveyor_jobs_total", (("kind", "diagnostics"), ("status", "completed")))
    before = read_worker_metrics().get(done_key, 0.0)
    worker = WorkerProcess(
        ["maintenance"],
        concurrency=2,
        env={
            "CONVEYOR_BROKER_URL": private_broker,
            "CONVEYOR_REDIS_URL": get_settings().resolved_broker_url(),
            "CONVEYOR_METRICS_FLUSH_SECONDS": "0.5",
        },
    )
    try:
        jobs = [submit_on(private_broker, org, seconds=0.3, steps=1) for _ in range(6)]
        for job in jobs:
            assert wait_for_job(client, job["id"], org.headers, timeout=60)["status"] == "completed"
        wait_until(
            lambda: read_worker_metrics().get(done_key, 0.0) >= before + len(jobs),
            20,
            "the prefork children's job counts",
        )
        children = worker.children()
    finally:
        worker.stop()
    assert len(children) == 2
