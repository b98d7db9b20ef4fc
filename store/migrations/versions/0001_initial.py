"""Initial spine tables: organizations, api_keys, jobs, result_items.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25 18:54:49.947172
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite

import store.models

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "organizations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("plan", sa.String(length=50), nullable=False),
        sa.Column("created_at", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", store.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_org_id"), ["org_id"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column(
            "input",
            sa.JSON()
            .with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
            .with_variant(sqlite.JSON(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "progress",
            sa.JSON()
            .with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
            .with_variant(sqlite.JSON(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "error",
            sa.JSON()
            .with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
            .with_variant(sqlite.JSON(), "sqlite"),
            nullable=True,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("expires_at", store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("result_deleted_at", store.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_completed", ["completed_at"], unique=False)
        batch_op.create_index("ix_jobs_org_created", ["org_id", "created_at", "id"], unique=False)
        batch_op.create_index(
            "ix_jobs_org_kind_created", ["org_id", "kind", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_jobs_org_status_created", ["org_id", "status", "created_at", "id"], unique=False
        )
        batch_op.create_index("ix_jobs_status_expires", ["status", "expires_at"], unique=False)
        batch_op.create_index("ix_jobs_status_started", ["status", "started_at"], unique=False)

    op.create_table(
        "result_items",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=2048), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column(
            "data",
            sa.JSON()
            .with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
            .with_variant(sqlite.JSON(), "sqlite"),
            nullable=True,
        ),
        sa.Column("created_at", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("result_items", schema=None) as batch_op:
        batch_op.create_index("ux_result_items_job_seq", ["job_id", "seq"], unique=True)


def downgrade() -> None:

    with op.batch_alter_table("result_items", schema=None) as batch_op:
        batch_op.drop_index("ux_result_items_job_seq")

    op.drop_table("result_items")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_started")
        batch_op.drop_index("ix_jobs_status_expires")
        batch_op.drop_index("ix_jobs_org_status_created")
        batch_op.drop_index("ix_jobs_org_kind_created")
        batch_op.drop_index("ix_jobs_org_created")
        batch_op.drop_index("ix_jobs_completed")

    op.drop_table("jobs")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_org_id"))

    op.drop_table("api_keys")
    op.drop_table("organizations")
