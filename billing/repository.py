"""Queries of the billing domain. Functions take the caller's session and never commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from billing.models import (
    ROLLUP_SHARDS,
    BillingAccount,
    CreditEntry,
    Invoice,
    UsageEvent,
    UsageRollup,
)
from store import pagination

Executor = Session | Connection


def dialect_of(executor: Executor) -> str:
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    return str(bind.dialect.name)


def _insert(executor: Executor, model: Any) -> Any:
    dialect = dialect_of(executor)
    if dialect == "postgresql":
        return pg_insert(model)
    if dialect == "sqlite":
        return sqlite_insert(model)
    raise RuntimeError(f"unsupported dialect {dialect}")  # pragma: no cover


#: What an inserted event returns: the columns its rollup adds up.
_INSERTED = (
    UsageEvent.org_id,
    UsageEvent.period,
    UsageEvent.occurred_at,
    UsageEvent.meter,
    UsageEvent.dimension,
    UsageEvent.quantity,
)


def insert_events(session: Executor, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """Insert events, skipping any whose idempotency key exists; the rows actually inserted."""
    if not rows:
        return []
    stmt = (
        _insert(session, UsageEvent)
        .values(list(rows))
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(*_INSERTED)
    )
    return list(session.execute(stmt).all())


#: PostgreSQL: the events (as arrays: one statement text whatever the number of rows, so it is
#: prepared once) and the rollups of those actually inserted, in one statement.
_EVENT_COLUMNS = (
    ("org_id", "varchar"), ("meter", "varchar"), ("dimension", "varchar"),
    ("quantity", "bigint"), ("unit", "varchar"), ("subject_type", "varchar"),
    ("subject_id", "varchar"), ("occurred_at", "timestamptz"), ("period", "varchar"),
    ("idempotency_key", "varchar"), ("created_at", "timestamptz"),
)  # fmt: skip
_INSERT_WITH_ROLLUPS = text(
    f"""
    WITH ins AS (
        INSERT INTO usage_events ({", ".join(name for name, _ in _EVENT_COLUMNS)})
        SELECT * FROM unnest({", ".join(f"CAST(:{n} AS {t}[])" for n, t in _EVENT_COLUMNS)})
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING org_id, period, occurred_at, meter, dimension, quantity
    ), roll AS (
        INSERT INTO usage_rollups (org_id, period, day, meter, dimension, shard, quantity, events)
        SELECT org_id, period, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), meter,
               dimension, pg_backend_pid() % {ROLLUP_SHARDS}, sum(quantity), count(*)
        FROM ins GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (org_id, period, day, meter, dimension, shard) DO UPDATE
        SET quantity = usage_rollups.quantity + EXCLUDED.quantity,
            events = usage_rollups.events + EXCLUDED.events
    )
    SELECT count(*) FROM ins
    """
)


def insert_events_with_rollups(session: Executor, rows: Sequence[dict[str, Any]]) -> int:
    """PostgreSQL: :func:`insert_events` and :func:`add_to_rollups` of what was inserted as one
    statement (data-modifying CTEs): one round trip in the job's completing transaction. Returns
    how many events were new. Rollup rows are locked in key order (no deadlock between
    concurrent writers)."""
    if not rows:
        return 0
    params = {name: [row[name] for row in rows] for name, _ in _EVENT_COLUMNS}
    return int(session.execute(_INSERT_WITH_ROLLUPS, params).scalar_one())


_ROLLUP_KEY = ("org_id", "period", "day", "meter", "dimension", "shard")
#: The writing connection's rollup shard: concurrent writers (each its own connection) add to
#: different rows of one key, so none waits on another's row lock until its commit is flushed.
_SHARD: Any = literal_column(f"pg_backend_pid() % {ROLLUP_SHARDS}")


def insert_events_ctes(source: Any) -> tuple[Any, Any]:
    """PostgreSQL, as data-modifying CTEs of a caller's statement: the events of ``source`` (a
    CTE or subquery with the columns of :data:`_EVENT_COLUMNS`; a key already written is
    skipped) and the rollups of those actually inserted, as :func:`insert_events_with_rollups`
    does, so a state change and its usage commit as one statement."""
    names = [name for name, _ in _EVENT_COLUMNS]
    ins = (
        pg_insert(UsageEvent)
        .from_select(names, select(*(source.c[name] for name in names)))
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(*_INSERTED)
        .cte("usage_ins")
    )
    # Constants as SQL literals: the grouped expression must match the selected one exactly.
    day = func.to_char(
        func.timezone(literal_column("'UTC'"), ins.c.occurred_at), literal_column("'YYYY-MM-DD'")
    )
    keys = (ins.c.org_id, ins.c.period, day, ins.c.meter, ins.c.dimension)
    rollup = pg_insert(UsageRollup).from_select(
        [*_ROLLUP_KEY, "quantity", "events"],
        select(*keys, _SHARD, func.sum(ins.c.quantity), func.count())
        .group_by(*keys)
        .order_by(*keys),  # rollup rows locked in key order: no deadlock between writers
    )
    rollup = rollup.on_conflict_do_update(
        index_elements=list(_ROLLUP_KEY),
        set_={
            "quantity": UsageRollup.quantity + rollup.excluded.quantity,
            "events": UsageRollup.events + rollup.excluded.events,
        },
    )
    return ins, rollup.cte("usage_roll")


def add_to_rollups(session: Executor, rows: Sequence[dict[str, Any]]) -> None:
    """Upsert-increment rollup rows ``{org_id, period, day, meter, dimension, quantity, events}``
    (sorted, so concurrent writers lock rows in one order; shard 0: SQLite has one writer)."""
    if not rows:
        return
    ordered = sorted(
        ({**r, "shard": 0} for r in rows),
        key=lambda r: (r["org_id"], r["period"], r["day"], r["meter"], r["dimension"]),
    )
    stmt = _insert(session, UsageRollup).values(ordered)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(_ROLLUP_KEY),
        set_={
            "quantity": UsageRollup.quantity + stmt.excluded.quantity,
            "events": UsageRollup.events + stmt.excluded.events,
        },
    )
    session.execute(stmt)


def rollup_totals(session: Session, org_id: str, period: str, *, by_day: bool = False) -> list[Any]:
    """``(meter, dimension, [day,] quantity, events)`` of one organisation's billing month."""
    keys: list[Any] = [UsageRollup.meter, UsageRollup.dimension]
    if by_day:
        keys.append(UsageRollup.day)
    query = (
        select(*keys, func.sum(UsageRollup.quantity), func.sum(UsageRollup.events))
        .where(UsageRollup.org_id == org_id, UsageRollup.period == period)
        .group_by(*keys)
        .order_by(*keys)
    )
    return list(session.execute(query).all())


def rollup_lines(session: Session, org_id: str, period: str) -> list[Any]:
    """``(meter, dimension, day, quantity)`` rows of one month (for invoice lines)."""
    keys = (UsageRollup.meter, UsageRollup.dimension, UsageRollup.day)
    query = (
        select(*keys, func.sum(UsageRollup.quantity))
        .where(UsageRollup.org_id == org_id, UsageRollup.period == period)
        .group_by(*keys)
        .order_by(*keys)
    )
    return list(session.execute(query).all())


def subject_totals(session: Session, org_id: str, period: str, *, limit: int) -> list[Any]:
    """``(subject_type, subject_id, meter, dimension, quantity, events)`` from the events (on the
    (org, period, subject) index), at most ``limit`` rows."""
    keys = (UsageEvent.subject_type, UsageEvent.subject_id, UsageEvent.meter, UsageEvent.dimension)
    query = (
        select(*keys, func.sum(UsageEvent.quantity), func.count())
        .where(UsageEvent.org_id == org_id, UsageEvent.period == period)
        .group_by(*keys)
        .order_by(*keys)
        .limit(limit)
    )
    return list(session.execute(query).all())


def orgs_with_usage(session: Session, period: str) -> list[str]:
    query = select(UsageRollup.org_id).where(UsageRollup.period == period).distinct()
    return [str(org_id) for org_id in session.scalars(query)]


def invoiced(session: Executor, org_id: str, period: str) -> bool:
    query = select(Invoice.id).where(Invoice.org_id == org_id, Invoice.period == period)
    return session.scalar(query) is not None


# --- credits ----------------------------------------------------------------------------------


def credit_sum(session: Session, org_id: str) -> int:
    query = select(func.coalesce(func.sum(CreditEntry.amount_micros), 0)).where(
        CreditEntry.org_id == org_id
    )
    return int(session.scalar(query) or 0)


def add_credit(
    session: Session, org_id: str, amount_micros: int, reason: str, invoice_id: str | None = None
) -> CreditEntry:
    entry = CreditEntry(
        org_id=org_id, amount_micros=amount_micros, reason=reason, invoice_id=invoice_id
    )
    session.add(entry)
    session.flush()
    return entry


def get_account(session: Session, org_id: str) -> BillingAccount | None:
    return session.get(BillingAccount, org_id)


# --- invoices ---------------------------------------------------------------------------------


def claim_invoice(session: Session, values: dict[str, Any]) -> str | None:
    """Insert the (org, period) invoice unless one exists; its id when this call made it."""
    stmt = (
        _insert(session, Invoice)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["org_id", "period"])
        .returning(Invoice.id)
    )
    return session.execute(stmt).scalar()


def move_invoice(
    session: Session, invoice_id: str, from_status: str, values: dict[str, Any]
) -> bool:
    """Compare-and-set an invoice's status: apply ``values`` only while it is ``from_status``;
    whether this call moved it."""
    stmt = (
        update(Invoice)
        .where(Invoice.id == invoice_id, Invoice.status == from_status)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    result = session.execute(stmt)
    return bool(getattr(result, "rowcount", 0) == 1)


def get_invoice(
    session: Session, org_id: str, invoice_id: str, *, lock: bool = False
) -> Invoice | None:
    query = select(Invoice).where(Invoice.id == invoice_id, Invoice.org_id == org_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.scalar(query)


def list_invoices(
    session: Session, org_id: str, *, limit: int, cursor: str | None
) -> tuple[list[Invoice], str | None]:
    query = select(Invoice).where(Invoice.org_id == org_id)
    return pagination.list_page(session, query, Invoice, limit=limit, cursor=cursor)
