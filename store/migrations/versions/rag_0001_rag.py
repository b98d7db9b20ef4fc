"""RAG: datasets, their files, model providers, endpoints, policies and per-caller usage.

Revision ID: rag_0001
Revises: 0001_initial
Create Date: 2026-12-06 13:40:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

import store.models

revision: str = "rag_0001"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = ("rag",)
depends_on: str | Sequence[str] | None = None

JSON = store.models.JSONType
TS = store.models.UTCDateTime(timezone=True)


def _owned(name: str, *columns: Any) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        *columns,
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(f"ix_{name}_org_created", name, ["org_id", "created_at", "id"])


def upgrade() -> None:
    _owned(
        "rag_datasets",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("dtype", sa.String(length=30), nullable=False),
        sa.Column("configuration", JSON, nullable=False),
        sa.Column("embedding_model", sa.String(length=200), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("chunk_overlap", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
    )
    op.create_table(
        "rag_files",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("source", sa.String(length=2048), nullable=False),
        sa.Column("media_type", sa.String(length=60), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["dataset_id"], ["rag_datasets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rag_files_dataset_created", "rag_files", ["dataset_id", "created_at", "id"])
    op.create_index("ix_rag_files_dataset_name", "rag_files", ["dataset_id", "name"])
    _owned(
        "rag_providers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("base_url", sa.String(length=2048), nullable=True),
        sa.Column("api_key_encrypted", sa.Text(), nullable=True),
        sa.Column("models", JSON, nullable=False),
    )
    _owned(
        "rag_endpoints",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("slug", sa.String(length=100), nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.UniqueConstraint("slug", name="uq_rag_endpoints_slug"),
    )
    _owned(
        "rag_policies",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("config", JSON, nullable=False),
    )
    op.create_table(
        "rag_usage",
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("caller", sa.String(length=80), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["endpoint_id"], ["rag_endpoints.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("endpoint_id", "caller", "day"),
    )


def downgrade() -> None:
    for name in ("rag_usage", "rag_policies", "rag_endpoints", "rag_providers", "rag_files"):
        op.drop_table(name)
    op.drop_table("rag_datasets")
