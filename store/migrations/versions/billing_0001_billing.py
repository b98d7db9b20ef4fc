"""Billing: usage events and rollups, the credit ledger, invoices, billing accounts.

Revision ID: billing_0001
Revises: 0001_initial
Create Date: 2026-12-06 13:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import store.models

revision: str = "billing_0001"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = ("billing",)
depends_on: str | Sequence[str] | None = None

JSON = store.models.JSONType
TS = store.models.UTCDateTime(timezone=True)
BIGPK = store.models.BigIntPK


def _org() -> sa.ForeignKey:
    return sa.ForeignKey("organizations.id", ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column("id", BIGPK, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(length=36), _org(), nullable=False),
        sa.Column("meter", sa.String(length=40), nullable=False),
        sa.Column("dimension", sa.String(length=100), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("unit", sa.String(length=20), nullable=False),
        sa.Column("subject_type", sa.String(length=40), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("idempotency_key", name="ux_usage_events_idempotency_key"),
    )
    op.create_index(
        "ix_usage_events_org_period_subject",
        "usage_events",
        ["org_id", "period", "subject_type", "subject_id"],
    )
    op.create_table(
        "usage_rollups",
        sa.Column("org_id", sa.String(length=36), _org(), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("meter", sa.String(length=40), nullable=False),
        sa.Column("dimension", sa.String(length=100), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "period", "day", "meter", "dimension"),
    )
    op.create_index("ix_usage_rollups_period", "usage_rollups", ["period"])
    op.create_table(
        "billing_credits",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("org_id", sa.String(length=36), _org(), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("invoice_id", sa.String(length=36), nullable=True, unique=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_billing_credits_org_id", "billing_credits", ["org_id"])
    op.create_table(
        "invoices",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("org_id", sa.String(length=36), _org(), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("plan", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("lines", JSON, nullable=False),
        sa.Column("subtotal_micros", sa.BigInteger(), nullable=False),
        sa.Column("allowance_micros", sa.BigInteger(), nullable=False),
        sa.Column("credits_applied_micros", sa.BigInteger(), nullable=False),
        sa.Column("total_micros", sa.BigInteger(), nullable=False),
        sa.Column("period_start", TS, nullable=False),
        sa.Column("period_end", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("finalized_at", TS, nullable=True),
        sa.Column("paid_at", TS, nullable=True),
        sa.Column("voided_at", TS, nullable=True),
        sa.UniqueConstraint("org_id", "period", name="ux_invoices_org_period"),
    )
    op.create_index("ix_invoices_org_created", "invoices", ["org_id", "created_at", "id"])
    op.create_table(
        "billing_accounts",
        sa.Column("org_id", sa.String(length=36), _org(), primary_key=True),
        sa.Column("overdrawn_since", TS, nullable=True),
        sa.Column("stopped_at", TS, nullable=True),
    )


def downgrade() -> None:
    for table in (
        "billing_accounts",
        "invoices",
        "billing_credits",
        "usage_rollups",
        "usage_events",
    ):
        op.drop_table(table)
