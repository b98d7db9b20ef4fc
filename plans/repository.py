"""Queries of the plans domain. Functions take the caller's session and never commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from plans.models import Plan, UsageCounter
from store.models import Job, Organization


def get_plan(session: Session, name: str) -> Plan | None:
    return session.get(Plan, name)


def list_plans(session: Session) -> Sequence[Plan]:
    return session.scalars(select(Plan).order_by(Plan.pages_per_month, Plan.name)).all()


def get_org(session: Session, org_id: str, *, lock: bool = False) -> Organization | None:
    query = select(Organization).where(Organization.id == org_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.scalar(query)


#: An organisation's plan name and its plan row's columns (NULL when the plan has no row), as
#: one Core query built once: the job-submit hot path runs it for every job.
_ORG_PLAN = (
    select(Organization.__table__.c.plan.label("org_plan"), *Plan.__table__.c)
    .select_from(
        Organization.__table__.outerjoin(
            Plan.__table__, Plan.__table__.c.name == Organization.__table__.c.plan
        )
    )
    .where(Organization.__table__.c.id == bindparam("org_id"))
)


def get_org_plan(session: Session | Connection, org_id: str) -> Row[Any] | None:
    """The row of :data:`_ORG_PLAN` (``org_plan`` plus the plan's columns), None if no org."""
    return session.execute(_ORG_PLAN, {"org_id": org_id}).first()


def get_org_by_name_or_id(session: Session, ref: str) -> Organization | None:
    return session.scalar(
        select(Organization).where((Organization.id == ref) | (Organization.name == ref))
    )


def count_active_jobs(
    session: Session, org_id: str, statuses: Sequence[str], *, at_most: int
) -> int:
    """Count the org's active jobs, stopping at ``at_most`` (the plan's limit): the cost is
    bounded by the limit, not by how many jobs are queued."""
    active = (
        select(Job.id)
        .where(Job.org_id == org_id, Job.status.in_(statuses))
        .limit(at_most)
        .subquery()
    )
    return int(session.scalar(select(func.count()).select_from(active)) or 0)


def pages_crawled_since(
    session: Session | Connection, org_id: str, since: datetime, kinds: Sequence[str]
) -> int:
    """Pages crawled by the organisation's crawl jobs created since ``since`` (from progress)."""
    pages = Job.progress["pages_crawled"].as_integer()
    query = select(func.coalesce(func.sum(func.coalesce(pages, 0)), 0)).where(
        Job.org_id == org_id, Job.kind.in_(kinds), Job.created_at >= since
    )
    return int(session.scalar(query) or 0)


def get_counter(session: Session | Connection, org_id: str, period: str, metric: str) -> int:
    value = session.scalar(
        select(UsageCounter.amount).where(
            UsageCounter.org_id == org_id,
            UsageCounter.period == period,
            UsageCounter.metric == metric,
        )
    )
    return int(value or 0)


def add_to_counters(
    executor: Session | Connection, org_id: str, period: str, amounts: dict[str, int]
) -> None:
    """Atomic upsert-increment of several metrics in one statement (safe under concurrent
    workers on PostgreSQL and SQLite). Rows are written in metric order, so two writers of the
    same organisation's counters take the row locks in the same order."""
    rows: list[dict[str, Any]] = [
        {"org_id": org_id, "period": period, "metric": metric, "amount": amount}
        for metric, amount in sorted(amounts.items())
        if amount > 0
    ]
    if not rows:
        return
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    dialect = bind.dialect.name
    if dialect == "postgresql":
        pg = pg_insert(UsageCounter).values(rows)
        executor.execute(
            pg.on_conflict_do_update(
                index_elements=["org_id", "period", "metric"],
                set_={"amount": UsageCounter.amount + pg.excluded.amount},
            )
        )
    elif dialect == "sqlite":
        lite = sqlite_insert(UsageCounter).values(rows)
        executor.execute(
            lite.on_conflict_do_update(
                index_elements=["org_id", "period", "metric"],
                set_={"amount": UsageCounter.amount + lite.excluded.amount},
            )
        )
    else:  # pragma: no cover - only the two supported stores exist
        raise RuntimeError(f"unsupported dialect {dialect}")
