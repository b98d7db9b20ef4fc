"""Tables of the billing domain: usage events and their rollups, the credit ledger, invoices."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from common.timeutil import utcnow
from store.models import Base, BigIntPK, JSONType, UTCDateTime, new_id


class UsageEvent(Base):
    """One metered quantity, append-only; ``idempotency_key`` makes every write at most once.

    ``period`` is the billing month the event is charged in: the month it occurred in, or the
    open month when that one was already invoiced (a late event, billed as an adjustment)."""

    __tablename__ = "usage_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    meter: Mapped[str] = mapped_column(String(40))
    dimension: Mapped[str] = mapped_column(String(100), default="")
    quantity: Mapped[int] = mapped_column(BigInteger)
    unit: Mapped[str] = mapped_column(String(20))
    subject_type: Mapped[str] = mapped_column(String(40))
    subject_id: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(timezone=True))
    period: Mapped[str] = mapped_column(String(7))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(timezone=True), default=utcnow)

    __table_args__ = (
        Index(
            "ix_usage_events_org_period_subject", "org_id", "period", "subject_type", "subject_id"
        ),
    )


class UsageRollup(Base):
    """Per organisation, billing month, day, meter and dimension: the sum of the events' quantities,
    kept by upsert in the transaction that inserts the events (reads never scan events). Split
    into ``shard`` rows by the writing database connection (:data:`ROLLUP_SHARDS`), so
    concurrent writers of one key do not wait on one row's lock; readers sum the shards."""

    __tablename__ = "usage_rollups"

    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # day occurred, "2026-12-06"
    meter: Mapped[str] = mapped_column(String(40), primary_key=True)
    dimension: Mapped[str] = mapped_column(String(100), primary_key=True)
    shard: Mapped[int] = mapped_column(
        SmallInteger, primary_key=True, default=0, server_default="0"
    )
    quantity: Mapped[int] = mapped_column(BigInteger, default=0)
    events: Mapped[int] = mapped_column(BigInteger, default=0)


#: How many rows one rollup key may be split into (by writing connection, on PostgreSQL).
ROLLUP_SHARDS = 32


class CreditEntry(Base):
    """The credit ledger: grants (positive) and credits applied to invoices (negative)."""

    __tablename__ = "billing_credits"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text, default="")
    invoice_id: Mapped[str | None] = mapped_column(String(36), nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(timezone=True), default=utcnow)


class Invoice(Base):
    """One organisation's bill for one month; unique per (org, period), so closing is idempotent."""

    __tablename__ = "invoices"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    period: Mapped[str] = mapped_column(String(7))
    plan: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(10))  # draft | open | paid | void
    currency: Mapped[str] = mapped_column(String(3))
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    subtotal_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    allowance_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_applied_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    total_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(UTCDateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(timezone=True), default=utcnow)
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime(timezone=True))
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime(timezone=True))
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("org_id", "period", name="ux_invoices_org_period"),
        Index("ix_invoices_org_created", "org_id", "created_at", "id"),
    )


class BillingAccount(Base):
    """Per organisation: when it ran out of credit (None while it has some), and when its running
    deployments were stopped for it."""

    __tablename__ = "billing_accounts"

    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    overdrawn_since: Mapped[datetime | None] = mapped_column(UTCDateTime(timezone=True))
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(timezone=True))
