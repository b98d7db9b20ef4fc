"""The job hot path's store code against real PostgreSQL: one-statement start and completion,
and pooled connections that died while idle are replaced instead of failing a job."""

from __future__ import annotations

import logging
import threading

import psycopg
import pytest
from sqlalchemy import select, text

from store import db
from store import jobs as job_store
from store.db import autocommit, session_scope
from store.jobs import JobStatus, StartOutcome
from store.models import Job, ResultItem
from tests.conftest import PG_ADMIN_URL, OrgKey
from webhooks.repository import LISTENING_TO_JOB


def _queued(org: OrgKey) -> str:
    with session_scope() as session:
        return job_store.insert_job(
            session, org_id=org.org_id, kind="diagnostics", input={"seconds": 0}
        ).id


def test_start_then_complete_is_one_statement_each(org: OrgKey) -> None:
    job_id = _queued(org)
    with autocommit() as connection:
        outcome, job, listening = job_store.start(
            connection, job_id, "delivery-1", 3, also=LISTENING_TO_JOB
        )
        assert outcome == StartOutcome.STARTED and job is not None
        assert job.attempts == 1 and listening is False
        # The same delivery again is a duplicate of a running job's message: skipped.
        again, _, _ = job_store.start(connection, job_id, "delivery-2", 3, also=LISTENING_TO_JOB)
        assert again == StartOutcome.SKIP
        won = job_store.complete(
            connection,
            job_id,
            result={"ok": True},
            result_seq=0,
            delivery_id="delivery-1",
            kind="diagnostics",
            merge_progress={"steps": 1},
        )
        assert won
        # A second completion (or one racing a cancel) loses and writes no second result.
        assert not job_store.complete(
            connection,
            job_id,
            result={"ok": 2},
            result_seq=1,
            delivery_id="delivery-1",
            kind="diagnostics",
        )
    with session_scope() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.status == JobStatus.COMPLETED
        assert row.progress == {"steps": 1} and row.expires_at is not None
        items = session.scalars(select(ResultItem).where(ResultItem.job_id == job_id)).all()
        assert [(i.seq, i.data) for i in items] == [(0, {"ok": True})]


def test_complete_loses_to_cancel_exactly_once(org: OrgKey) -> None:
    ids = [_queued(org) for _ in range(40)]
    with autocommit() as connection:
        for job_id in ids:
            job_store.start(connection, job_id, f"d-{job_id}", 3)
    results: dict[str, list[str]] = {job_id: [] for job_id in ids}

    def finish(job_id: str) -> None:
        with autocommit() as connection:
            if job_store.complete(
                connection,
                job_id,
                result={"x": 1},
                result_seq=0,
                delivery_id=f"d-{job_id}",
                kind="diagnostics",
            ):
                results[job_id].append("completed")

    def cancel(job_id: str) -> None:
        with session_scope() as session:
            if job_store.transition(
                session, job_id, to=JobStatus.CANCELLED, from_=[JobStatus.RUNNING]
            ):
                results[job_id].append("cancelled")

    threads = [threading.Thread(target=f, args=(j,)) for j in ids for f in (finish, cancel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(len(winners) == 1 for winners in results.values())
    with session_scope() as session:
        for job_id, winners in results.items():
            items = session.scalars(select(ResultItem).where(ResultItem.job_id == job_id)).all()
            assert len(items) == (1 if winners == ["completed"] else 0)


@pytest.mark.parametrize("options", [{}, {"isolation_level": "AUTOCOMMIT"}])
def test_a_connection_killed_while_idle_is_replaced(
    org: OrgKey, monkeypatch: pytest.MonkeyPatch, options: dict[str, str]
) -> None:
    monkeypatch.setattr(db, "PING_BYPASS_SECONDS", 0.0)
    engine = db._create_engine(**options)  # a pool of its own: the next checkout reuses it
    try:
        with engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        # Kill that pooled connection's server process behind the pool's back.
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with engine.connect() as connection:
            again = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert again != pid
    finally:
        engine.dispose()


def test_a_job_survives_its_pooled_connections_dying_inside_the_bypass_window(
    org: OrgKey, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No ping (the connections were used a moment ago), the server side of every pooled
    connection killed: start and completion reconnect and the job completes."""
    import types

    from jobs.context import JobContext
    from tasks import runner

    monkeypatch.setattr(db, "PING_BYPASS_SECONDS", 3600.0)
    job_id = _queued(org)
    for durable in (True, False):  # make sure the autocommit pools hold a connection
        with autocommit(durable=durable) as connection:
            connection.execute(text("SELECT 1"))

    def kill_pooled() -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (db.get_engine().url.database,),
            )

    def handler(ctx: JobContext) -> dict[str, int]:
        kill_pooled()  # again between start and completion
        return {"done": 1}

    kill_pooled()
    task = types.SimpleNamespace(request=types.SimpleNamespace(id="delivery-x"))
    try:
        with caplog.at_level(logging.WARNING, logger="store.db"):
            runner.run_job(task, job_id, handler)
    finally:  # other connections of the pools were killed too: drop them for the next tests
        db.get_engine().dispose()
        db.get_autocommit_engine().dispose()
        db.get_relaxed_autocommit_engine().dispose()
    # At least the start met a dead connection (the completion may draw one the pool already
    # knew to replace, depending on which pooled connection it gets).
    assert any("connection lost" in r.getMessage() for r in caplog.records)
    url = db.get_engine().url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as check:
        row = check.execute("SELECT status, attempts FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row == (JobStatus.COMPLETED, 1)


def test_a_result_holding_nul_characters_is_stored(org: OrgKey) -> None:
    """A model's generated text may hold NUL, which PostgreSQL's JSONB refuses: the result is
    stored with U+FFFD in its place instead of failing the job."""
    job_id = _queued(org)
    with autocommit() as connection:
        job_store.start(connection, job_id, "d-nul", 3)
        won = job_store.complete(
            connection,
            job_id,
            result={"text": "a\x00b", "lines": [{"content": "\x00"}]},
            result_seq=0,
            delivery_id="d-nul",
            kind="diagnostics",
        )
    assert won
    [item] = list(job_store.iter_result_items(job_id))
    assert item.data == {"text": "a\ufffdb", "lines": [{"content": "\ufffd"}]}


def test_the_start_skips_its_disk_flush_and_the_completion_does_not(org: OrgKey) -> None:
    """A job's start commits without waiting for the disk (its completion's durable commit
    flushes it, the log being flushed in order); the completion and every other write wait."""
    with autocommit(durable=False) as relaxed, autocommit() as durable:
        assert relaxed.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
        assert durable.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    with session_scope() as session:
        assert session.execute(text("SHOW synchronous_commit")).scalar() == "on"
    job_id = _queued(org)
    with autocommit(durable=False) as relaxed:
        first = job_store.start_first(relaxed, job_id, "d-relaxed", also=LISTENING_TO_JOB)
        assert first is not None and first[0].attempts == 1 and first[1] is False
        # Not queued any more: the first-delivery statement changes nothing.
        assert job_store.start_first(relaxed, job_id, "d-other") is None
    with autocommit() as durable:
        assert job_store.complete(
            durable,
            job_id,
            result=None,
            result_seq=0,
            delivery_id="d-relaxed",
            kind="diagnostics",
        )
