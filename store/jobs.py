"""The job repository and lifecycle: creation, the one compare-and-set transition function,
progress counters, result items, keyset listing, expiry, purge and reaping.

Functions take the caller's session and never commit (the caller owns the transaction).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, aliased

from common.errors import ErrorCode
from common.timeutil import utcnow
from config import get_settings
from store import pagination
from store.db import session_scope
from store.models import Job, ResultItem, new_id


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[str] = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE: frozenset[str] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
ALL_STATUSES: tuple[str, ...] = tuple(s.value for s in JobStatus)


def insert_job(
    session: Session | Connection,
    *,
    org_id: str,
    kind: str,
    input: dict[str, Any],
    job_id: str | None = None,
) -> Job:
    """One job of :func:`insert_jobs` (tests and benchmarks seed rows with it)."""
    return insert_jobs(session, org_id=org_id, kind=kind, inputs=[input], job_ids=[job_id])[0]


def insert_jobs(
    session: Session | Connection,
    *,
    org_id: str,
    kind: str,
    inputs: Sequence[dict[str, Any]],
    job_ids: Sequence[str | None] | None = None,
) -> list[Job]:
    """Insert new queued jobs with one Core ``INSERT`` (no unit-of-work flush; many rows: one
    executemany, pipelined by the driver) and return them as detached ``Job`` objects holding
    exactly the values written. Only ``jobs.service.create_jobs`` calls this: it also validates,
    applies the quota and records the jobs' messages."""
    now = utcnow()
    ids = list(job_ids) if job_ids is not None else [None] * len(inputs)
    jobs = [
        Job(
            id=job_id or new_id(),
            org_id=org_id,
            kind=kind,
            input=input,
            status=JobStatus.QUEUED.value,
            progress={},
            error=None,
            attempts=0,
            delivery_id=None,
            created_at=now,
            started_at=None,
            completed_at=None,
            expires_at=None,
            result_deleted_at=None,
            lease_expires_at=None,
        )
        for job_id, input in zip(ids, inputs, strict=True)
    ]
    rows = [{name: getattr(job, name) for name in _JOB_COLUMNS} for job in jobs]
    session.execute(_INSERT_JOB, rows[0] if len(rows) == 1 else rows)
    return jobs


_JOB_COLUMNS: tuple[str, ...] = tuple(Job.__table__.columns.keys())
#: A Core insert of the table (not the ORM entity): no unit of work, no bulk-persistence layer.
_INSERT_JOB = insert(cast(Table, Job.__table__))


def get_job(session: Session, org_id: str, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.org_id == org_id))


def transition(
    session: Session | Connection,
    job_id: str,
    *,
    to: JobStatus,
    from_: Sequence[str],
    error: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    merge_progress: dict[str, Any] | None = None,
    delivery_id: str | None = None,
) -> bool:
    """Move a job to ``to`` if and only if it is in one of ``from_`` (compare-and-set).

    Exactly one of several racing callers wins; the others get False and change nothing.
    Terminal states stamp ``completed_at`` and ``expires_at`` (completed_at + result TTL) and
    end the lease. ``delivery_id`` fences a worker's transition: it wins only while the job is
    still held by that delivery (a job re-queued after its lease lapsed is not its to end).
    """
    now = utcnow()
    changes: dict[str, Any] = {"status": to.value, **(values or {})}
    if merge_progress:
        changes["progress"] = _merged_progress(session, job_id, merge_progress)
    if to == JobStatus.RUNNING:
        changes.setdefault("started_at", func.coalesce(Job.started_at, now))
    if to.value in TERMINAL:
        changes["completed_at"] = now
        changes["expires_at"] = now + timedelta(seconds=get_settings().result_ttl_seconds)
        changes["error"] = error
        changes["lease_expires_at"] = None
    stmt = update(Job).where(Job.id == job_id, Job.status.in_(list(from_)))
    if delivery_id is not None:
        stmt = stmt.where(Job.delivery_id == delivery_id)
    stmt = stmt.values(**changes)
    result = session.execute(stmt.execution_options(synchronize_session=False))
    won = bool(getattr(result, "rowcount", 0) == 1)
    if won and to.value in TERMINAL:
        after_terminal(session, job_id)
    return won


@dataclass(frozen=True)
class CompletionPart:
    """A terminal hook's work folded into a job's completing statement (PostgreSQL), so it costs
    no round trip of its own: data-modifying CTEs over ``done``, the row the completion changed
    (columns ``id``, ``org_id``, ``kind``, ``started_at``, ``completed_at`` and ``columns``).

    ``key`` names the CTEs' shape (parts with equal keys build equal CTEs: the statement is built
    once per shape); ``params`` are the bind values they use."""

    key: Hashable
    build: Callable[[Any], Sequence[Any]]
    columns: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)


TerminalHook = Callable[[Session | Connection, str], None]
#: ``fn(kind) -> CompletionPart | None``: a hook's work for a completion of ``kind`` as part of
#: the completing statement; None when the hook has nothing to do for that completion.
PartOf = Callable[[str], CompletionPart | None]


@lru_cache(maxsize=1)
def _terminal_hooks() -> tuple[tuple[TerminalHook, PartOf | None], ...]:
    from config.queues import JOB_COMPLETION_PARTS, JOB_TERMINAL_HOOKS, resolve

    return tuple(
        (
            resolve(path),
            resolve(JOB_COMPLETION_PARTS[path]) if path in JOB_COMPLETION_PARTS else None,
        )
        for path in JOB_TERMINAL_HOOKS
    )


def after_terminal(
    executor: Session | Connection, job_id: str, *, folded: Sequence[TerminalHook] = ()
) -> None:
    """Run ``config.queues.JOB_TERMINAL_HOOKS`` for a job that just became terminal, in the
    transaction of that transition (billing meters its usage there: exactly once), except those
    in ``folded`` (already done by the completing statement itself)."""
    for hook, _ in _terminal_hooks():
        if hook not in folded:
            hook(executor, job_id)


def fail_worker_lost(session: Session | Connection, job_id: str, why: str) -> bool:
    """Fail a running job whose worker was lost too often (``worker_lost``); True if it won."""
    return transition(
        session,
        job_id,
        to=JobStatus.FAILED,
        from_=[JobStatus.RUNNING],
        error={"code": ErrorCode.WORKER_LOST.value, "message": f"{why}; giving up."},
    )


class StartOutcome(StrEnum):
    STARTED = "started"  # first delivery: queued -> running
    REDELIVERED = "redelivered"  # same message again after a worker died: run it again
    EXHAUSTED = "exhausted"  # too many deliveries: the job failed with worker_lost
    SKIP = "skip"  # finished, cancelled, or a duplicate message: do nothing


@dataclass(frozen=True)
class StartedJob:
    """What a worker needs of a job it starts."""

    org_id: str
    kind: str
    input: dict[str, Any]
    attempts: int


@lru_cache(maxsize=8)
def _start_statement(also: ColumnElement[Any] | None) -> Any:
    """The first delivery's compare-and-set, built once per ``also`` (statement construction
    costs more CPU than executing it)."""
    returning: list[Any] = [Job.org_id, Job.kind, Job.input, Job.attempts]
    if also is not None:
        returning.append(also)
    return (
        update(Job)
        .where(Job.id == bindparam("job_id"), Job.status == JobStatus.QUEUED.value)
        .values(
            status=JobStatus.RUNNING.value,
            started_at=func.coalesce(Job.started_at, bindparam("now", type_=Job.started_at.type)),
            attempts=Job.attempts + 1,
            delivery_id=bindparam("delivery_id"),
            lease_expires_at=bindparam("lease_until", type_=Job.lease_expires_at.type),
        )
        .returning(*returning)
    )


def start_first(
    executor: Session | Connection,
    job_id: str,
    delivery_id: str,
    *,
    also: ColumnElement[Any] | None = None,
) -> tuple[StartedJob, Any] | None:
    """The first delivery's start: one ``UPDATE … RETURNING`` (compare-and-set from
    ``queued``), so it needs no surrounding transaction; None when the job was not queued (see
    :func:`start` for the rest). ``also`` is an extra SQL expression over the job row (e.g.
    "does a webhook listen?") returned by that same statement, its value second."""
    now = utcnow()
    lease_until = now + timedelta(seconds=get_settings().job_lease_seconds)
    first = executor.execute(
        _start_statement(also),
        {"job_id": job_id, "delivery_id": delivery_id, "now": now, "lease_until": lease_until},
    ).first()
    if first is None:
        return None
    extra = first[4] if also is not None else None
    return StartedJob(first.org_id, first.kind, dict(first.input), first.attempts), extra


def start(
    executor: Session | Connection,
    job_id: str,
    delivery_id: str,
    max_deliveries: int,
    *,
    also: ColumnElement[Any] | None = None,
) -> tuple[StartOutcome, StartedJob | None, Any]:
    """Mark a job running for one delivery of its message, counting deliveries.

    The first delivery is :func:`start_first`; a job that is not ``queued`` is a redelivery to
    run, a duplicate to skip, or past its delivery cap (failed ``worker_lost``). ``also``'s
    value comes back as the third element (None on the rarer redelivery paths, where the caller
    asks separately).
    """
    first = start_first(executor, job_id, delivery_id, also=also)
    if first is not None:
        return StartOutcome.STARTED, first[0], first[1]
    lease_until = utcnow() + timedelta(seconds=get_settings().job_lease_seconds)
    outcome = _redeliver(executor, job_id, delivery_id, max_deliveries, lease_until)
    if outcome != StartOutcome.REDELIVERED:
        return outcome, None, None
    again = executor.execute(
        select(Job.org_id, Job.kind, Job.input, Job.attempts).where(Job.id == job_id)
    ).one()
    return outcome, StartedJob(again.org_id, again.kind, dict(again.input), again.attempts), None


#: The completing statements built so far, by shape (statement construction costs more CPU
#: than executing it): (with progress, with result, the folded parts' keys) → statement.
_COMPLETE_STATEMENTS: dict[tuple[bool, bool, tuple[Hashable, ...]], Any] = {}
_DONE_COLUMNS = ("id", "org_id", "kind", "started_at", "completed_at")


def _complete_statement(
    with_progress: bool, with_result: bool, parts: Sequence[CompletionPart] = ()
) -> Any:
    """PostgreSQL: ``running → completed`` plus the result item and the folded terminal hooks'
    work as one statement (data-modifying CTEs), built once per shape; yields 1 when this caller
    won (the CTEs reading ``done`` write nothing otherwise)."""
    shape = (with_progress, with_result, tuple(part.key for part in parts))
    built = _COMPLETE_STATEMENTS.get(shape)
    if built is not None:
        return built
    changes: dict[str, Any] = {
        "status": JobStatus.COMPLETED.value,
        "completed_at": bindparam("now", type_=Job.completed_at.type),
        "expires_at": bindparam("expires_at", type_=Job.expires_at.type),
        "error": None,
        "lease_expires_at": None,
    }
    if with_progress:
        changes["progress"] = Job.progress.op("||")(bindparam("progress", type_=postgresql.JSONB))
    columns = list(_DONE_COLUMNS) if parts else ["id"]
    for part in parts:
        columns += [name for name in part.columns if name not in columns]
    done = (
        update(Job)
        .where(
            Job.id == bindparam("job_id"),
            Job.status == JobStatus.RUNNING.value,
            Job.delivery_id == bindparam("held_by"),
        )
        .values(**changes)
        .returning(*(Job.__table__.c[name] for name in columns))
        .cte("done")
    )
    query = select(func.count()).select_from(done)
    if with_result:
        item = insert(ResultItem).from_select(
            ["job_id", "seq", "name", "content_type", "data", "created_at"],
            select(
                done.c.id,
                bindparam("seq", type_=ResultItem.seq.type),
                literal("result"),
                literal("application/json"),
                bindparam("data", type_=ResultItem.data.type),
                bindparam("now", type_=ResultItem.created_at.type),
            ),
        )
        query = query.add_cte(item.cte("item"))
    for part in parts:
        query = query.add_cte(*part.build(done))
    _COMPLETE_STATEMENTS[shape] = query
    return query


def complete(
    executor: Session | Connection,
    job_id: str,
    *,
    result: dict[str, Any] | None,
    result_seq: int,
    delivery_id: str,
    kind: str,
    merge_progress: dict[str, Any] | None = None,
) -> bool:
    """``running → completed`` with the job's small result item, atomically; True if it won
    (only while delivery ``delivery_id`` still holds the job).

    PostgreSQL: one statement, so an autocommit connection commits it in one round trip. The
    terminal hooks that declare a :class:`CompletionPart` for the job's ``kind``
    (``config.queues.JOB_COMPLETION_PARTS``: billing's metering) are part of that statement
    too; any other hook runs after it, in ``executor``'s transaction (a Session then).
    Elsewhere (``executor`` must then be a Session): the insert and the transition in the
    caller's transaction, rolled back if the job lost the race.
    """
    if _dialect(executor) != "postgresql":
        assert isinstance(executor, Session)
        if result is not None:
            add_result_item(executor, job_id, seq=result_seq, name="result", data=result)
        won = transition(
            executor,
            job_id,
            to=JobStatus.COMPLETED,
            from_=[JobStatus.RUNNING],
            merge_progress=merge_progress,
            delivery_id=delivery_id,
        )
        if not won:
            executor.rollback()
        return won
    now = utcnow()
    params: dict[str, Any] = {
        "job_id": job_id,
        "held_by": delivery_id,
        "now": now,
        "expires_at": now + timedelta(seconds=get_settings().result_ttl_seconds),
    }
    if merge_progress:
        params["progress"] = merge_progress
    if result is not None:
        params["seq"] = result_seq
        params["data"] = storable(result)
    folded: list[TerminalHook] = []
    parts: list[CompletionPart] = []
    for hook, part_of in _terminal_hooks():
        if part_of is not None:
            folded.append(hook)
            part = part_of(kind)
            if part is not None:
                parts.append(part)
                params.update(part.params)
    statement = _complete_statement(bool(merge_progress), result is not None, parts)
    won = bool(executor.execute(statement, params).scalar_one() == 1)
    if won and len(folded) < len(_terminal_hooks()):
        after_terminal(executor, job_id, folded=folded)
    return won


def _dialect(executor: Session | Connection) -> str:
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    return str(bind.dialect.name)


def _redeliver(
    session: Session | Connection,
    job_id: str,
    delivery_id: str,
    max_deliveries: int,
    lease_until: datetime,
) -> StartOutcome:
    """A delivery of a job that is not queued: a redelivery to run, a duplicate, or the last."""
    row = session.execute(
        select(Job.status, Job.attempts, Job.delivery_id).where(Job.id == job_id)
    ).first()
    if row is None or row.status != JobStatus.RUNNING or row.delivery_id != delivery_id:
        return StartOutcome.SKIP
    if row.attempts >= max_deliveries:
        fail_worker_lost(
            session, job_id, f"The worker died while running this job {row.attempts} times"
        )
        return StartOutcome.EXHAUSTED
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.attempts == row.attempts)
        .values(attempts=row.attempts + 1, lease_expires_at=lease_until)
    )
    updated = session.execute(stmt.execution_options(synchronize_session=False))
    return StartOutcome.REDELIVERED if getattr(updated, "rowcount", 0) == 1 else StartOutcome.SKIP


def status_of(session: Session, job_id: str) -> str | None:
    return session.scalar(select(Job.status).where(Job.id == job_id))


def _lock_progress(session: Session | Connection, job_id: str) -> dict[str, Any]:
    """Take the job row's write lock first, then read its progress.

    A no-op UPDATE locks the row on PostgreSQL and takes SQLite's write lock, so concurrent
    read-modify-write cycles on the counters serialise instead of losing increments.
    """
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(attempts=Job.attempts)
        .execution_options(synchronize_session=False)
    )
    return dict(session.scalar(select(Job.progress).where(Job.id == job_id)) or {})


def relax_commit_durability(session: Session) -> None:
    """Let this transaction's commit return before its WAL reaches the disk (PostgreSQL's
    ``synchronous_commit = off``, this transaction only).

    For progress-only transactions: a database crash may lose the last fraction of a second of
    them (whole transactions, never partial ones), and any later ordinary commit (the job's
    completion) makes them durable first. Saves one disk flush per progress update.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit = off"))


def _merged_progress(session: Session | Connection, job_id: str, counters: dict[str, Any]) -> Any:
    """The value of ``progress`` with ``counters`` merged in: an SQL expression on PostgreSQL
    (``progress || :counters``, atomic under the row lock), else read under the write lock."""
    if _dialect(session) == "postgresql":
        return Job.progress.op("||")(literal(counters, type_=postgresql.JSONB))
    return {**_lock_progress(session, job_id), **counters}


def hold_running(session: Session | Connection, job_id: str) -> bool:
    """Take the job row's write lock if and only if the job is ``running``; True then.

    Every write of a job's progress or result rows goes through it (or through the same
    ``status = 'running'`` condition in its own UPDATE), in the writer's transaction: it orders
    with the compare-and-set that ends the job, so once a job is terminal nothing of it changes
    (work that finishes after a cancel is discarded, never counted).
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
        .values(attempts=Job.attempts)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def set_progress(session: Session, job_id: str, counters: dict[str, Any]) -> bool:
    """Merge counters into a running job's progress (shallow merge, atomic); False (nothing
    written) once the job is no longer running.

    PostgreSQL: one ``UPDATE … SET progress = progress || :counters WHERE status = 'running'``
    (the row lock orders concurrent merges). Elsewhere: read-modify-write under the row's lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        merged = Job.progress.op("||")(literal(counters, type_=postgresql.JSONB))
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
            .values(progress=merged)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)
    if not hold_running(session, job_id):
        return False
    current = dict(session.scalar(select(Job.progress).where(Job.id == job_id)) or {})
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(progress={**current, **counters})
        .execution_options(synchronize_session=False)
    )
    return True


def increment_progress(
    session: Session, job_id: str, deltas: dict[str, int]
) -> dict[str, Any] | None:
    """Add to a running job's counters exactly, even with many workers updating one job at
    once; the merged counters, or None (nothing written) once the job is no longer running."""
    if not hold_running(session, job_id):
        return None
    current = dict(session.scalar(select(Job.progress).where(Job.id == job_id)) or {})
    merged = dict(current)
    for name, delta in deltas.items():
        merged[name] = int(merged.get(name, 0)) + delta
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(progress=merged)
        .execution_options(synchronize_session=False)
    )
    return merged


# --- results ---------------------------------------------------------------------------------


def add_result_item(
    session: Session,
    job_id: str,
    *,
    seq: int,
    name: str = "",
    content_type: str = "application/json",
    body: str | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """Add a result row to a running job; False (nothing added) once it is terminal."""
    if not hold_running(session, job_id):
        return False
    session.add(
        ResultItem(
            job_id=job_id,
            seq=seq,
            name=name,
            content_type=content_type,
            body=storable(body),
            data=storable(data),
        )
    )
    return True


_NUL = "\x00"


def storable(value: Any) -> Any:
    """``value`` with every NUL character in its strings replaced by U+FFFD: PostgreSQL's text
    and JSONB cannot hold NUL, and a job's output (a model's generated text, a crawled page)
    may contain one. Walks only what can hold a string; returns ``value`` itself when clean."""
    if isinstance(value, str):
        return value.replace(_NUL, "\ufffd") if _NUL in value else value
    if isinstance(value, dict):
        return {key: storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable(item) for item in value]
    return value


def iter_result_items(job_id: str, *, batch: int = 200) -> Iterator[ResultItem]:
    """Stream a job's result items in order, constant memory (keyset batches, short sessions)."""
    last_seq = -1
    while True:
        with session_scope() as session:
            rows = list(
                session.scalars(
                    select(ResultItem)
                    .where(ResultItem.job_id == job_id, ResultItem.seq > last_seq)
                    .order_by(ResultItem.seq)
                    .limit(batch)
                )
            )
        if not rows:
            return
        yield from rows
        last_seq = rows[-1].seq
        if len(rows) < batch:
            return


def has_results(session: Session, job_id: str) -> bool:
    return (
        session.scalar(select(ResultItem.id).where(ResultItem.job_id == job_id).limit(1))
        is not None
    )


def delete_results(session: Session, job_id: str) -> None:
    session.execute(delete(ResultItem).where(ResultItem.job_id == job_id))
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.result_deleted_at.is_(None))
        .values(result_deleted_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def result_gone(job: Job, now: datetime | None = None) -> bool:
    if job.result_deleted_at is not None:
        return True
    return job.expires_at is not None and job.expires_at <= (now or utcnow())


# --- listing (keyset pagination) -----------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    statuses: tuple[str, ...] = ()
    kind: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    descending: bool = True


def _page_query(
    org_id: str, flt: JobFilter, status: str | None, after: tuple[datetime, str] | None, limit: int
) -> Select[Job]:
    conditions: list[ColumnElement[bool]] = [Job.org_id == org_id]
    if status is not None:
        conditions.append(Job.status == status)
    if flt.kind:
        conditions.append(Job.kind == flt.kind)
    if flt.created_after:
        conditions.append(Job.created_at > flt.created_after)
    if flt.created_before:
        conditions.append(Job.created_at < flt.created_before)
    if after is not None:
        conditions.append(pagination.after(Job, after, descending=flt.descending))
    order = pagination.order(Job, descending=flt.descending)
    return select(Job).where(and_(*conditions)).order_by(*order).limit(limit)


def list_jobs(
    session: Session, org_id: str, flt: JobFilter, *, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """One page of an organisation's jobs and the cursor of the next page.

    Several statuses are fetched as one UNION ALL of per-status index walks, each limited, so
    the cost of a page never depends on the size of the table.
    """
    after = pagination.decode_cursor(cursor)
    fetch = limit + 1
    if len(flt.statuses) <= 1:
        status = flt.statuses[0] if flt.statuses else None
        rows: list[Job] = list(session.scalars(_page_query(org_id, flt, status, after, fetch)))
    else:
        parts = [
            _page_query(org_id, flt, status, after, fetch).subquery().select()
            for status in flt.statuses
        ]
        union = union_all(*parts).subquery()
        job_alias = aliased(Job, union)
        order = pagination.order(job_alias, descending=flt.descending)
        rows = cast(
            list[Job], list(session.scalars(select(job_alias).order_by(*order).limit(fetch)))
        )
    return pagination.page(rows, limit)


# --- maintenance ---------------------------------------------------------------------------


def expire_results(session: Session, now: datetime, *, batch: int = 500) -> int:
    """Delete the results of jobs whose ``expires_at`` has passed. Returns the jobs expired."""
    ids = list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status.in_(list(TERMINAL)),
                Job.expires_at <= now,
                Job.result_deleted_at.is_(None),
            )
            .limit(batch)
        )
    )
    if not ids:
        return 0
    session.execute(delete(ResultItem).where(ResultItem.job_id.in_(ids)))
    session.execute(
        update(Job)
        .where(Job.id.in_(ids))
        .values(result_deleted_at=now)
        .execution_options(synchronize_session=False)
    )
    return len(ids)


def purge_metadata(session: Session, now: datetime, *, batch: int = 1000) -> int:
    """Delete job rows finished more than ``metadata_ttl_days`` ago."""
    cutoff = now - timedelta(days=get_settings().metadata_ttl_days)
    ids = list(
        session.scalars(
            select(Job.id)
            .where(Job.status.in_(list(TERMINAL)), Job.completed_at < cutoff)
            .limit(batch)
        )
    )
    if ids:
        session.execute(delete(ResultItem).where(ResultItem.job_id.in_(ids)))
        session.execute(delete(Job).where(Job.id.in_(ids)))
    return len(ids)


def reap_stuck(
    session: Session, now: datetime, hard_limits: dict[str, int], grace: int
) -> list[str]:
    """Fail jobs that stay ``running`` past their kind's hard time limit (code ``timed_out``)."""
    reaped: list[str] = []
    for kind, limit in hard_limits.items():
        cutoff = now - timedelta(seconds=limit + grace)
        stuck = list(
            session.scalars(
                select(Job.id).where(
                    Job.status == JobStatus.RUNNING, Job.kind == kind, Job.started_at < cutoff
                )
            )
        )
        for job_id in stuck:
            if transition(
                session,
                job_id,
                to=JobStatus.FAILED,
                from_=[JobStatus.RUNNING],
                error={
                    "code": "timed_out",
                    "message": f"The job ran longer than its {limit} s limit for kind {kind!r}.",
                },
            ):
                reaped.append(job_id)
    return reaped


# --- leases and the sweeper -----------------------------------------------------------------


def renew_leases(executor: Session | Connection, held: dict[str, str], until: datetime) -> set[str]:
    """Extend the leases of the running jobs in ``held`` (job id → the delivery holding it) to
    ``until``; returns the job ids renewed. A job missing from the answer is no longer held by
    that delivery (finished, cancelled, or re-queued after its lease lapsed)."""
    if not held:
        return set()
    renewed: set[str] = set()
    for job_id, delivery_id in held.items():
        result = executor.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status == JobStatus.RUNNING.value,
                Job.delivery_id == delivery_id,
            )
            .values(lease_expires_at=until)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) == 1:
            renewed.add(job_id)
    return renewed


def lapsed_leases(
    session: Session, now: datetime, *, limit: int = 500
) -> list[tuple[str, str, int]]:
    """Running jobs whose lease lapsed before ``now``: ``(id, kind, attempts)``, oldest first."""
    rows = session.execute(
        select(Job.id, Job.kind, Job.attempts)
        .where(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
        .order_by(Job.lease_expires_at)
        .limit(limit)
    )
    return [(row.id, row.kind, row.attempts) for row in rows]


def requeue(session: Session, job_id: str, now: datetime) -> bool:
    """``running → queued`` for a job whose lease lapsed (compare-and-set on the lapsed lease,
    so a worker that renewed it in the meantime keeps it). The next start counts an attempt."""
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.RUNNING.value,
            Job.lease_expires_at < now,
        )
        .values(
            status=JobStatus.QUEUED.value,
            delivery_id=None,
            lease_expires_at=None,
            started_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def queued_before(
    session: Session | Connection, before: datetime, *, limit: int = 1000
) -> list[tuple[str, str]]:
    """``(id, kind)`` of jobs ``queued`` since before ``before``, oldest first."""
    rows = session.execute(
        select(Job.id, Job.kind)
        .where(Job.status == JobStatus.QUEUED.value, Job.created_at < before)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return [(row.id, row.kind) for row in rows]


def statuses(session: Session | Connection, job_ids: Sequence[str]) -> dict[str, str]:
    """The status of each of ``job_ids`` that still exists."""
    if not job_ids:
        return {}
    rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(list(job_ids))))
    return {row.id: row.status for row in rows}


def kinds_of(session: Session | Connection, job_ids: Sequence[str]) -> dict[str, str]:
    """The kind of each of ``job_ids`` that still exists."""
    if not job_ids:
        return {}
    rows = session.execute(select(Job.id, Job.kind).where(Job.id.in_(list(job_ids))))
    return {row.id: row.kind for row in rows}
