"""Beat tasks against the real store and broker: reaper, expiry, purge, canary, one beat."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from common.timeutil import utcnow
from store import jobs as job_store
from store.db import session_scope
from store.jobs import JobStatus
from store.models import Job
from tests.conftest import OrgKey
from tests.helpers import stored_job


def _job(org: OrgKey, **values: Any) -> str:
    with session_scope() as session:
        job = stored_job(session, org_id=org.org_id, kind="diagnostics", input={})
        for name, value in values.items():
            setattr(job, name, value)
        return job.id


def test_reaper_fails_jobs_stuck_past_their_limit(org: OrgKey) -> None:
    from tasks.maintenance import reap_stuck_jobs

    stuck = _job(org, status=JobStatus.RUNNING, started_at=utcnow() - timedelta(hours=1))
    fresh = _job(org, status=JobStatus.RUNNING, started_at=utcnow())
    reaped = reap_stuck_jobs()
    assert stuck in reaped and fresh not in reaped
    with session_scope() as session:
        job = session.get(Job, stuck)
        assert job is not None and job.status == "failed"
        assert job.error is not None and job.error["code"] == "timed_out"
        assert job.expires_at is not None
        assert job_store.status_of(session, fresh) == "running"


def test_purge_removes_metadata_after_30_days(org: OrgKey) -> None:
    from tasks.maintenance import purge_metadata

    old = _job(org, status=JobStatus.COMPLETED, completed_at=utcnow() - timedelta(days=31))
    recent = _job(org, status=JobStatus.COMPLETED, completed_at=utcnow() - timedelta(days=29))
    with session_scope() as session:
        job_store.add_result_item(session, old, seq=0, name="result", data={"x": 1})
    assert purge_metadata() >= 1
    with session_scope() as session:
        assert session.get(Job, old) is None
        assert session.get(Job, recent) is not None


def test_broker_canary_reports_consumed_and_stale_queues(
    worker: object, caplog: pytest.LogCaptureFixture
) -> None:
    from config import get_settings
    from tasks.maintenance import CANARY_KEY, CANARY_SENT_KEY, broker_canary, queue_health

    client = redis.Redis.from_url(get_settings().resolved_broker_url(), decode_responses=True)
    for queue in ("maintenance", "crawl"):
        client.delete(CANARY_KEY.format(queue=queue), CANARY_SENT_KEY.format(queue=queue))
    broker_canary()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not client.get(CANARY_KEY.format(queue="maintenance")):
        time.sleep(0.1)
    assert queue_health()["maintenance"]["canary_age_s"] is not None
    # A queue whose canary was sent long ago and never consumed is reported.
    client.delete(CANARY_KEY.format(queue="crawl"))
    client.set(CANARY_SENT_KEY.format(queue="crawl"), str(time.time() - 3600))
    with caplog.at_level(logging.ERROR, logger="tasks.maintenance"):
        broker_canary()
    assert any("queue crawl: no worker consumed" in r.getMessage() for r in caplog.records)


@pytest.mark.e2e
def test_only_one_beat_schedules(migrated: dict[str, object]) -> None:
    """Two beat processes: redbeat's Redis lock lets exactly one of them send tasks."""
    from config import get_settings

    client = redis.Redis.from_url(get_settings().resolved_broker_url())
    for key in client.scan_iter("conveyor:redbeat:*"):
        client.delete(key)
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "beat",
        "-S",
        "workers.beat:ResilientRedBeatScheduler",
        "-l",
        "DEBUG",
        "--max-interval",
        "1",
    ]
    # Each beat writes its log to a file: the test waits for the first send (a loaded machine
    # takes a while to import the app), then gives the other beat time to send if it could.
    folder = Path(tempfile.mkdtemp(prefix="beats-"))
    files = [(folder / f"beat-{i}.log").open("w") for i in range(2)]
    beats = [
        subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=file)
        for file in files
    ]

    def logs() -> list[str]:
        return [(folder / f"beat-{i}.log").read_text() for i in range(2)]

    try:
        deadline = time.monotonic() + 90
        while not any("Sending due task" in log for log in logs()):
            assert time.monotonic() < deadline, [log[-2000:] for log in logs()]
            time.sleep(0.5)
        time.sleep(8)  # several of the scheduler's 1 s ticks: the other beat would send by now
    finally:
        for beat in beats:
            beat.terminate()
        for beat in beats:
            beat.wait(timeout=30)
        for file in files:
            file.close()
    senders = [log for log in logs() if "Sending due task" in log]
    assert len(senders) == 1, [log[-2000:] for log in logs()]
    # The reconciler is sent only while a deployment exists (an idle Flower stays quiet).
    from deployments.repository import any_live

    skipped = "reconcile-deployments not sent: nothing to do" in senders[0]
    assert skipped == (not any_live()), senders[0][-3000:]
    assert client.exists("conveyor:redbeat::lock") or "Acquiring lock" in "".join(logs())
