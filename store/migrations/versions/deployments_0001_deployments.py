"""Deployments: the deployment (desired + observed state) and its revisions.

Revision ID: deployments_0001
Revises: 0001_initial
Create Date: 2026-11-25 19:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import store.models

revision: str = "deployments_0001"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = ("deployments",)
depends_on: str | Sequence[str] | None = None

JSON = store.models.JSONType
TS = store.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("model_path", sa.String(length=1000), nullable=False),
        sa.Column("runtime", sa.String(length=20), nullable=False),
        sa.Column("gpu_type", sa.String(length=100), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("replicas_min", sa.Integer(), nullable=False),
        sa.Column("replicas_max", sa.Integer(), nullable=False),
        sa.Column("env_encrypted", sa.Text(), nullable=True),
        sa.Column("env_keys", JSON, nullable=False),
        sa.Column("runtime_options", JSON, nullable=False),
        sa.Column("context_length", sa.Integer(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("desired", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("endpoint", sa.String(length=500), nullable=True),
        sa.Column("endpoints", JSON, nullable=False),
        sa.Column("ready_replicas", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(length=20), nullable=False),
        sa.Column("backend_state", JSON, nullable=True),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.Column("gpu_seconds_billed", sa.Integer(), nullable=False),
        sa.Column("accounted_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_deployments_org_created", "deployments", ["org_id", "created_at", "id"])
    op.create_index(
        "ix_deployments_org_status_created",
        "deployments",
        ["org_id", "status", "created_at", "id"],
    )
    op.create_index("ix_deployments_org_name", "deployments", ["org_id", "name"])
    op.create_index("ix_deployments_desired", "deployments", ["desired"])
    op.create_table(
        "deployment_revisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("env_encrypted", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_deployment_revisions",
        "deployment_revisions",
        ["deployment_id", "revision"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ux_deployment_revisions", table_name="deployment_revisions")
    op.drop_table("deployment_revisions")
    op.drop_index("ix_deployments_desired", table_name="deployments")
    op.drop_index("ix_deployments_org_name", table_name="deployments")
    op.drop_index("ix_deployments_org_status_created", table_name="deployments")
    op.drop_index("ix_deployments_org_created", table_name="deployments")
    op.drop_table("deployments")
