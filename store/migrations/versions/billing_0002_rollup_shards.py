"""Billing: usage rollups get a ``shard`` in their key, so concurrent job completions of one
organisation add to different rows instead of queueing on one row lock until each commit's
disk flush (readers sum the shards).

Revision ID: billing_0002
Revises: billing_0001
Create Date: 2026-12-06 17:05:00
"""

import warnings
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "billing_0002"
down_revision: str | Sequence[str] | None = "billing_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = ["org_id", "period", "day", "meter", "dimension"]


def _replace_primary_key(batch: Any, columns: list[str]) -> None:
    if op.get_bind().dialect.name != "sqlite":  # SQLite's batch copy takes the new key as is
        batch.drop_constraint("usage_rollups_pkey", type_="primary")
    batch.create_primary_key("usage_rollups_pkey", columns)


def upgrade() -> None:
    with warnings.catch_warnings():
        # SQLite's batch copy warns that the copied table's key differs from the reflected one:
        # that is the change itself (a first `conveyor up` printed it on the terminal).
        warnings.filterwarnings("ignore", message=".*_alembic_tmp_usage_rollups.*primary_key")
        with op.batch_alter_table("usage_rollups", recreate="auto") as batch:
            batch.add_column(
                sa.Column("shard", sa.SmallInteger(), nullable=False, server_default="0")
            )
            _replace_primary_key(batch, [*_KEY, "shard"])


def downgrade() -> None:
    op.execute(
        """
        INSERT INTO usage_rollups (org_id, period, day, meter, dimension, quantity, events, shard)
        SELECT org_id, period, day, meter, dimension, sum(quantity), sum(events), -1
        FROM usage_rollups GROUP BY org_id, period, day, meter, dimension
        """
    )
    op.execute("DELETE FROM usage_rollups WHERE shard <> -1")
    with op.batch_alter_table("usage_rollups", recreate="auto") as batch:
        _replace_primary_key(batch, _KEY)
        batch.drop_column("shard")
