"""Jobs: a running job's lease (`lease_expires_at`), and the indexes the sweeper and the lease
reaper scan by.

Revision ID: jobs_0001
Revises: 0001_initial
Create Date: 2026-12-06 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import store.models

revision: str = "jobs_0001"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = ("jobs",)
depends_on: str | Sequence[str] | None = None

TS = store.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("lease_expires_at", TS, nullable=True))
    op.create_index("ix_jobs_status_lease", "jobs", ["status", "lease_expires_at"])
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_status_created", table_name="jobs")
    op.drop_index("ix_jobs_status_lease", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_expires_at")
