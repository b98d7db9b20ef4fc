"""Resources: resources, their backups and their bindings to deployments.

Revision ID: resources_0001
Revises: 0001_initial
Create Date: 2026-11-25 19:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import store.models

revision: str = "resources_0001"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = ("resources",)
depends_on: str | Sequence[str] | None = None

JSON = store.models.JSONType
TS = store.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("tier", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("limits", JSON, nullable=False),
        sa.Column("backup_schedule", sa.String(length=100), nullable=True),
        sa.Column("backup_retention_days", sa.Integer(), nullable=False),
        sa.Column("next_backup_at", TS, nullable=True),
        sa.Column("state", JSON, nullable=True),
        sa.Column("secret_encrypted", sa.Text(), nullable=True),
        sa.Column("source", JSON, nullable=True),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_resources_org_created", "resources", ["org_id", "created_at", "id"])
    op.create_index(
        "ix_resources_org_status_created", "resources", ["org_id", "status", "created_at", "id"]
    )
    op.create_index("ix_resources_org_name", "resources", ["org_id", "name"])
    op.create_index("ix_resources_next_backup", "resources", ["next_backup_at"])
    op.create_table(
        "resource_backups",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("resource_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("method", sa.String(length=40), nullable=True),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("fingerprint", JSON, nullable=True),
        sa.Column("meta", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("verified_at", TS, nullable=True),
        sa.Column("completed_at", TS, nullable=True),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["resource_id"], ["resources.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_resource_backups_resource_created",
        "resource_backups",
        ["resource_id", "created_at", "id"],
    )
    op.create_index("ix_resource_backups_expires", "resource_backups", ["expires_at"])
    op.create_table(
        "resource_bindings",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("resource_id", sa.String(length=40), nullable=False),
        sa.Column("env_prefix", sa.String(length=40), nullable=False),
        sa.Column("env_names", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["resource_id"], ["resources.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_resource_bindings_deployment",
        "resource_bindings",
        ["deployment_id", "created_at", "id"],
    )
    op.create_index("ix_resource_bindings_resource", "resource_bindings", ["resource_id"])


def downgrade() -> None:
    op.drop_index("ix_resource_bindings_resource", table_name="resource_bindings")
    op.drop_index("ix_resource_bindings_deployment", table_name="resource_bindings")
    op.drop_table("resource_bindings")
    op.drop_index("ix_resource_backups_expires", table_name="resource_backups")
    op.drop_index("ix_resource_backups_resource_created", table_name="resource_backups")
    op.drop_table("resource_backups")
    op.drop_index("ix_resources_next_backup", table_name="resources")
    op.drop_index("ix_resources_org_name", table_name="resources")
    op.drop_index("ix_resources_org_status_created", table_name="resources")
    op.drop_index("ix_resources_org_created", table_name="resources")
    op.drop_table("resources")
