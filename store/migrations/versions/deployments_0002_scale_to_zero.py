"""Deployments: `scaled_to_zero_at`, set while an idle deployment with replicas.min 0 runs none.

Revision ID: deployments_0002
Revises: deployments_0001
Create Date: 2026-11-26 02:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import store.models

revision: str = "deployments_0002"
down_revision: str | Sequence[str] | None = "deployments_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = store.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.add_column("deployments", sa.Column("scaled_to_zero_at", TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("scaled_to_zero_at")
