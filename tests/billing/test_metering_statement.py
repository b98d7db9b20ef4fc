"""Metering folded into a job's completing statement (PostgreSQL): the completion, its result
and its usage events with their rollups are one statement on an autocommit connection; the
events are those the Python path (``billing.metering.job_usage``) makes of the same row, only
the meters the kind uses, and a completion that loses (a redelivery, a cancel) writes none."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select

from billing import metering
from billing.models import UsageRollup
from config import get_settings
from store import jobs as job_store
from store.db import autocommit, get_autocommit_engine, session_scope
from store.jobs import JobStatus
from store.models import Job
from tests.billing.conftest import events_of
from tests.conftest import OrgKey, make_org

pytestmark = pytest.mark.usefixtures("migrated")


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL statements the autocommit pool executes inside the block."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        seen.append(sql)

    engine = get_autocommit_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _running(org: OrgKey, kind: str, input: dict[str, Any], progress: dict[str, Any]) -> str:
    with session_scope() as session:
        job_id = job_store.insert_job(session, org_id=org.org_id, kind=kind, input=input).id
    with autocommit() as connection:
        job_store.start(connection, job_id, f"d-{job_id}", 3)
    if progress:  # what the job flushed while it ran
        with session_scope() as session:
            assert job_store.set_progress(session, job_id, progress)
    return job_id


def _complete(job_id: str, kind: str, pending: dict[str, Any] | None = None) -> bool:
    with autocommit() as connection:
        return job_store.complete(
            connection,
            job_id,
            result={"ok": True},
            result_seq=0,
            delivery_id=f"d-{job_id}",
            kind=kind,
            merge_progress=pending,
        )


def _expected(job_id: str) -> set[tuple[str, str, int, str]]:
    """What the Python path makes of the job's row as it is now."""
    with session_scope() as session:
        row = session.execute(metering._JOB_ROW, {"job_id": job_id}).first()
    return {
        (u.meter, u.dimension, u.quantity, u.idempotency_key)
        for u in metering.job_usage(job_id, row)
    }


def _written(org_id: str, job_id: str) -> set[tuple[str, str, int, str]]:
    return {
        (e.meter, e.dimension, e.quantity, e.idempotency_key)
        for e in events_of(org_id)
        if e.subject_id == job_id
    }


@pytest.mark.parametrize(
    ("kind", "input", "progress", "pending", "meters"),
    [
        ("diagnostics", {"seconds": 0}, {}, {"steps_done": 1}, {"jobs"}),
        (
            "crawl",
            {"url": "https://example.org/"},
            {"pages_crawled": 7},
            {"pages_rendered": 3},
            {"jobs", "pages_crawled"},
        ),
        (
            "inference",
            {"body": {"model": "tiny-chat"}},
            {"usage_prompt_tokens": 12},
            {"usage_completion_tokens": 30, "usage_engine_seconds": 2},
            {"jobs", "tokens_in", "tokens_out", "gpu_seconds"},
        ),
        (
            "inference",  # a batch names its model in its first request
            {"requests": [{"body": {"model": "tiny-batch"}}]},
            {},
            {"usage_prompt_tokens": 5, "usage_completion_tokens": 0},
            {"jobs", "tokens_in"},
        ),
        (
            "assistant",  # a reply names its instance's model; a replica's reply has no engine time
            {"instance_id": "ins_1", "conversation_id": "c", "reply_id": "m", "model": "my-llm"},
            {},
            {"usage_prompt_tokens": 9, "usage_completion_tokens": 4},
            {"jobs", "tokens_in", "tokens_out"},
        ),
    ],
)
def test_the_completion_meters_its_usage_in_its_one_statement(
    kind: str,
    input: dict[str, Any],
    progress: dict[str, Any],
    pending: dict[str, Any],
    meters: set[str],
) -> None:
    org = make_org()
    job_id = _running(org, kind, input, progress)
    with statements() as seen:
        assert _complete(job_id, kind, pending)
    assert len(seen) == 1 and "INSERT INTO usage_events" in seen[0], seen
    written = _written(org.org_id, job_id)
    assert {meter for meter, *_ in written} == meters
    assert written == _expected(job_id)  # the SQL and the Python path agree
    with session_scope() as session:
        rollups = session.execute(
            select(UsageRollup.meter, UsageRollup.dimension, UsageRollup.quantity).where(
                UsageRollup.org_id == org.org_id
            )
        ).all()
    assert sorted(rollups) == sorted((m, d, q) for m, d, q, _ in written)
    # The same delivery completing again (a redelivered message) wins nothing, meters nothing.
    assert not _complete(job_id, kind, pending)
    assert _written(org.org_id, job_id) == written


def test_only_the_kinds_meters_are_part_of_its_statement() -> None:
    org = make_org()
    # A diagnostics job that (oddly) carries token counters is still metered as a job only.
    job_id = _running(org, "diagnostics", {"seconds": 0}, {"usage_prompt_tokens": 9})
    with statements() as seen:
        assert _complete(job_id, "diagnostics")
    assert "usage_prompt_tokens" not in seen[0] and "pages_crawled" not in seen[0]
    assert {meter for meter, *_ in _written(org.org_id, job_id)} == {"jobs"}
    assert _written(org.org_id, job_id) == _expected(job_id)


def test_a_completion_that_loses_to_a_cancel_meters_nothing_twice() -> None:
    org = make_org()
    job_id = _running(org, "diagnostics", {"seconds": 0}, {})
    with session_scope() as session:
        assert job_store.transition(
            session, job_id, to=JobStatus.CANCELLED, from_=[JobStatus.RUNNING]
        )
    cancelled = _written(org.org_id, job_id)  # the cancel's own hook metered the started job
    assert cancelled == {("jobs", "diagnostics", 1, f"job:{job_id}:jobs:diagnostics")}
    assert not _complete(job_id, "diagnostics")
    assert _written(org.org_id, job_id) == cancelled
    with session_scope() as session:
        assert session.scalar(select(Job.status).where(Job.id == job_id)) == "cancelled"


def test_metering_off_writes_no_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "billing_metering", False)
    org = make_org()
    job_id = _running(org, "crawl", {"url": "https://example.org/"}, {"pages_crawled": 2})
    with statements() as seen:
        assert _complete(job_id, "crawl")
    assert len(seen) == 1 and "usage_events" not in seen[0]
    assert _written(org.org_id, job_id) == set()


def test_concurrent_writers_add_to_their_own_rollup_shard_and_readers_sum_them() -> None:
    from billing import repository

    org = make_org()
    jobs = [_running(org, "diagnostics", {"seconds": 0}, {}) for _ in range(2)]
    # Two connections held at once (two worker processes): each writes its own shard's row.
    with autocommit() as first, autocommit() as second:
        pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() for c in (first, second)]
        for connection, job_id in zip((first, second), jobs, strict=True):
            assert job_store.complete(
                connection,
                job_id,
                result=None,
                result_seq=0,
                delivery_id=f"d-{job_id}",
                kind="diagnostics",
            )
    with session_scope() as session:
        shards = session.scalars(
            select(UsageRollup.shard).where(UsageRollup.org_id == org.org_id)
        ).all()
        assert sorted(shards) == sorted({pid % 32 for pid in pids}) or len(set(pids)) == 1
        period = session.scalar(select(UsageRollup.period).where(UsageRollup.org_id == org.org_id))
        assert period is not None
        totals = repository.rollup_totals(session, org.org_id, period)
        assert [(m, d, int(q), int(n)) for m, d, q, n in totals] == [("jobs", "diagnostics", 2, 2)]
        lines = repository.rollup_lines(session, org.org_id, period)
        assert [(m, d, int(q)) for m, d, _, q in lines] == [("jobs", "diagnostics", 2)]
