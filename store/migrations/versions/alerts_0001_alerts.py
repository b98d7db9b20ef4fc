"""Alerts: alert rules with their evaluation state, and their notified events.

Revision ID: alerts_0001
Revises: 0001_initial
Create Date: 2026-12-06 13:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import store.models

revision: str = "alerts_0001"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = ("alerts",)
depends_on: str | Sequence[str] | None = None

JSON = store.models.JSONType
TS = store.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("condition_type", sa.String(length=40), nullable=False),
        sa.Column("condition", JSON, nullable=False),
        sa.Column("channels", JSON, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("pending_since", TS, nullable=True),
        sa.Column("clear_since", TS, nullable=True),
        sa.Column("last_value", sa.Float(), nullable=True),
        sa.Column("last_evaluated_at", TS, nullable=True),
        sa.Column("last_transition_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alerts_org_created", "alerts", ["org_id", "created_at", "id"])
    op.create_index("ix_alerts_org_type_enabled", "alerts", ["org_id", "condition_type", "enabled"])
    op.create_index("ix_alerts_enabled_id", "alerts", ["enabled", "id"])
    op.create_table(
        "alert_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("alert_id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("details", JSON, nullable=False),
        sa.Column("emailed_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_alert_events_alert_version", "alert_events", ["alert_id", "version"], unique=True
    )
    op.create_index(
        "ix_alert_events_alert_created", "alert_events", ["alert_id", "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_table("alert_events")
    op.drop_table("alerts")
