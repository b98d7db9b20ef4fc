"""Projects: `project_tcp_proxies.enabled` (a proxy disabled without `?permanent=true` keeps its
external port).

Revision ID: projects_0002
Revises: projects_0001
Create Date: 2026-12-06 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "projects_0002"
down_revision: str | Sequence[str] | None = "projects_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "project_tcp_proxies",
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
    )


def downgrade() -> None:
    with op.batch_alter_table("project_tcp_proxies") as batch:
        batch.drop_column("enabled")
