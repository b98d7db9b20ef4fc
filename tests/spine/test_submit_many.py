"""Bulk submits: ``JobTask.submit_many`` / ``jobs.service.create_jobs`` create many jobs in one
transaction with the checks of a single submit (input validation, the plan's concurrency quota),
all or none, and their messages leave after the commit; a real worker runs them all."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from common.errors import QuotaExceeded, ValidationFailed
from jobs.service import create_jobs
from store import jobs as job_store
from store.db import session_scope
from store.models import Job
from tests.conftest import OrgKey, make_org
from tests.helpers import wait_for_job
from workers import outbox

NOOP = {"seconds": 0, "steps": 1}


def _count(org_id: str) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(Job.org_id == org_id)) or 0)


@pytest.mark.usefixtures("worker")
def test_submit_many_creates_and_runs_every_job(client: Any, org: OrgKey) -> None:
    from tasks.diagnostics import sleep

    ids = sleep.submit_many([{**NOOP, "steps": i + 1} for i in range(25)], org=org.name)
    assert len(ids) == len(set(ids)) == 25
    for index, job_id in enumerate(ids):
        done = wait_for_job(client, job_id, org.headers, timeout=60)
        assert done["status"] == "completed", done
        assert done["input"]["steps"] == index + 1  # in the order given
    assert sleep.submit_many([], org=org.name) == []


def test_the_batch_is_sent_only_after_its_commit(org: OrgKey) -> None:
    with session_scope() as session:
        jobs = create_jobs(session, "diagnostics", org.org_id, [NOOP] * 3)
        pending = outbox.pending(session)
        assert [m.job_id for m in pending] == [job.id for job in jobs]
        assert all(m.task_id == m.job_id for m in pending)  # each job's own first message
        session.rollback()  # nothing committed: nothing sent, no row left
        assert outbox.pending(session) == []
    assert _count(org.org_id) == 0


def test_one_invalid_input_refuses_the_whole_batch(org: OrgKey) -> None:
    with pytest.raises(ValidationFailed) as caught, session_scope() as session:
        create_jobs(session, "diagnostics", org.org_id, [NOOP, {"seconds": -1}, NOOP])
    assert caught.value.message.startswith("Job 1: ")
    assert caught.value.details[0]["loc"] == ["body", 1, "seconds"]
    assert _count(org.org_id) == 0


def test_a_batch_over_the_concurrency_quota_is_refused_whole() -> None:
    free = make_org(plan="free")  # 20 concurrent jobs
    with session_scope() as session:  # 15 active jobs (rows only: they stay queued)
        for _ in range(15):
            job_store.insert_job(session, org_id=free.org_id, kind="diagnostics", input=NOOP)
    with pytest.raises(QuotaExceeded) as caught, session_scope() as session:
        create_jobs(session, "diagnostics", free.org_id, [NOOP] * 6)
    assert caught.value.details == {"quota": "concurrent_jobs", "used": 15, "limit": 20}
    assert "6 more would go over it" in caught.value.message
    assert _count(free.org_id) == 15
    with session_scope() as session:  # exactly up to the limit is allowed
        assert len(create_jobs(session, "diagnostics", free.org_id, [NOOP] * 5)) == 5
    assert _count(free.org_id) == 20
