"""The outbox, the job leases and the sweeper, against the real store, broker and worker.

* A job's message leaves only after the transaction that created it commits; a rollback sends
  nothing.
* A queued job whose message never left (the process died between commit and send) or was lost
  with the broker's data is sent again by the sweeper; one that waits in a backlog is not.
* A running job whose lease lapsed is re-queued and runs again; the old delivery can no longer
  end it; past the attempt cap it fails ``worker_lost``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import update

from common.timeutil import utcnow
from config import get_settings
from jobs import jobs as sweeps
from jobs.service import create_job
from store import jobs as job_store
from store.db import autocommit, session_scope
from store.jobs import JobStatus
from store.models import Job
from tests.conftest import OrgKey
from tests.helpers import wait_for_job
from workers import outbox


@pytest.fixture
def quick_sweeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CONVEYOR_SWEEP_QUEUED_AFTER_SECONDS", "1")
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("CONVEYOR_SWEEP_QUEUED_AFTER_SECONDS")
    get_settings.cache_clear()


def _backdate(job_id: str, seconds: float) -> None:
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(created_at=utcnow() - timedelta(seconds=seconds))
        )


def _broker() -> redis.Redis:
    return redis.Redis.from_url(get_settings().resolved_broker_url())


def test_a_rolled_back_transaction_sends_nothing(org: OrgKey, migrated: Any) -> None:
    job_id = ""
    with pytest.raises(RuntimeError), session_scope() as session:
        job_id = create_job(session, "diagnostics", org.org_id, {"seconds": 0}).id
        assert [m.job_id for m in outbox.pending(session)] == [job_id]
        raise RuntimeError("the request failed after creating the job")
    with session_scope() as session:
        assert job_store.status_of(session, job_id) is None
    assert outbox.in_flight([job_id]) == {}


def test_the_message_leaves_after_the_commit(client: Any, org: OrgKey, worker: object) -> None:
    with session_scope() as session:
        job = create_job(session, "diagnostics", org.org_id, {"seconds": 0})
        assert outbox.in_flight([job.id]) == {}  # not before the commit
        [message] = outbox.pending(session)
        assert message.task_id == job.id  # Flower finds the job by its id
        assert message.label == "diagnostics.run"
    assert job.id in outbox.in_flight([job.id])
    done = wait_for_job(client, job.id, org.headers, timeout=30)
    assert done["status"] == "completed" and done["attempts"] == 1


def test_the_sweeper_sends_a_job_whose_message_never_left(
    client: Any, org: OrgKey, worker: object, quick_sweeps: None
) -> None:
    with session_scope() as session:  # committed, never sent: the API died after its commit
        job_id = job_store.insert_job(
            session, org_id=org.org_id, kind="diagnostics", input={"seconds": 0, "steps": 1}
        ).id
    _backdate(job_id, 5)
    assert job_id in sweeps.sweep_queued()
    done = wait_for_job(client, job_id, org.headers, timeout=30)
    assert done["status"] == "completed" and done["attempts"] == 1
    assert job_id not in sweeps.sweep_queued()


def test_a_job_waiting_in_a_backlog_is_not_resent_but_a_lost_message_is(
    org: OrgKey, migrated: Any, quick_sweeps: None
) -> None:
    # The session's worker does not consume ``inference``: this job's message stays queued.
    with session_scope() as session:
        job = create_job(
            session,
            "inference",
            org.org_id,
            {"operation": "embeddings", "body": {"model": "none", "input": "x"}},
        )
    broker = _broker()
    try:
        _backdate(job.id, 5)
        time.sleep(1.2)  # its in-flight note is older than the threshold too
        assert broker.llen("inference") >= 1
        assert job.id not in sweeps.sweep_queued()  # still waiting in its queue
        broker.delete("inference")  # the broker lost its data (a restart without persistence)
        assert job.id in sweeps.sweep_queued()
        assert broker.llen("inference") == 1
    finally:
        with session_scope() as session:
            job_store.transition(session, job.id, to=JobStatus.CANCELLED, from_=[JobStatus.QUEUED])
        broker.delete("inference")


def _start(org: OrgKey, delivery_id: str, attempts: int = 0) -> str:
    with session_scope() as session:
        job_id = job_store.insert_job(
            session, org_id=org.org_id, kind="diagnostics", input={"seconds": 0, "steps": 1}
        ).id
        session.execute(update(Job).where(Job.id == job_id).values(attempts=attempts))
    with autocommit() as connection:
        outcome, _, _ = job_store.start(connection, job_id, delivery_id, 3)
    assert outcome == job_store.StartOutcome.STARTED
    return job_id


def _lapse(job_id: str) -> None:
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def test_a_lapsed_lease_requeues_the_job_and_fences_the_old_delivery(
    client: Any, org: OrgKey, worker: object
) -> None:
    job_id = _start(org, "dead-worker")
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.lease_expires_at is not None
        assert job.lease_expires_at > utcnow() + timedelta(seconds=10)
    _lapse(job_id)
    assert job_id in sweeps.requeue_lapsed()["requeued"]
    done = wait_for_job(client, job_id, org.headers, timeout=30)
    assert done["status"] == "completed" and done["attempts"] == 2
    with autocommit() as connection:  # the first delivery comes back: it changes nothing
        won = job_store.complete(
            connection,
            job_id,
            result={"late": True},
            result_seq=9,
            delivery_id="dead-worker",
            kind="diagnostics",
        )
    assert not won


def test_a_job_whose_worker_keeps_dying_fails_worker_lost(org: OrgKey, migrated: Any) -> None:
    job_id = _start(org, "d", attempts=get_settings().max_deliveries - 1)
    _lapse(job_id)
    assert job_id in sweeps.requeue_lapsed()["failed"]
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "failed"
        assert job.error is not None and job.error["code"] == "worker_lost"


def test_the_lease_keeper_renews_and_notices_a_job_taken_away(org: OrgKey, migrated: Any) -> None:
    job_id = _start(org, "mine")
    keeper = sweeps.LeaseKeeper()
    keeper.hold(job_id, "mine")
    _lapse(job_id)
    keeper.renew_now()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.lease_expires_at is not None
        assert job.lease_expires_at > utcnow()
    assert not keeper.lost(job_id)
    _lapse(job_id)
    assert job_id in sweeps.requeue_lapsed()["requeued"]
    keeper.renew_now()
    assert keeper.lost(job_id)  # the handler stops at its next cancellation check
    keeper.release(job_id)
    with session_scope() as session:  # leave nothing queued for the session's worker
        job_store.transition(session, job_id, to=JobStatus.CANCELLED, from_=[JobStatus.QUEUED])


def test_flower_shows_a_task_by_kind_and_operation() -> None:
    from jobs.service import task_label

    assert task_label("deploy", {"operation": "apply"}) == "deploy.apply"
    assert task_label("backup", {"operation": "verify"}) == "backup.verify"
    assert task_label("crawl", {"mode": "full"}) == "crawl.full"
    assert task_label("diagnostics", {"seconds": 1}) == "diagnostics.run"
