"""Resources: a per-resource backup count retention, and the plans' retention maxima.

Revision ID: resources_0002
Revises: resources_0001
Create Date: 2026-11-26 02:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "resources_0002"
down_revision: str | Sequence[str] | None = "resources_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = "api_contract_0001"

# The built-in plans' maxima (plans.service.DEFAULT_PLANS): days, count.
_MAXIMA = {"free": (7, 10), "starter": (30, 50), "pro": (90, 200), "unlimited": (3650, 10**6)}


def upgrade() -> None:
    op.add_column(
        "resources",
        sa.Column("backup_retention_count", sa.Integer(), nullable=False, server_default="10"),
    )
    op.add_column(
        "plans",
        sa.Column("max_backup_retention_days", sa.Integer(), nullable=False, server_default="7"),
    )
    op.add_column(
        "plans",
        sa.Column("max_backup_retention_count", sa.Integer(), nullable=False, server_default="10"),
    )
    plans = sa.table(
        "plans",
        sa.column("name", sa.String),
        sa.column("max_backup_retention_days", sa.Integer),
        sa.column("max_backup_retention_count", sa.Integer),
    )
    for name, (days, count) in _MAXIMA.items():
        op.execute(
            plans.update()
            .where(plans.c.name == name)
            .values(max_backup_retention_days=days, max_backup_retention_count=count)
        )


def downgrade() -> None:
    with op.batch_alter_table("plans") as plans:
        plans.drop_column("max_backup_retention_count")
        plans.drop_column("max_backup_retention_days")
    with op.batch_alter_table("resources") as resources:
        resources.drop_column("backup_retention_count")
