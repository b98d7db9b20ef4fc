"""Assistants: an assistant message's tool calls, and the call a tool message answers.

Revision ID: assistants_0002
Revises: assistants_0001
Create Date: 2026-12-06 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import store.models

revision: str = "assistants_0002"
down_revision: str | Sequence[str] | None = "assistants_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "assistant_messages", sa.Column("tool_calls", store.models.JSONType, nullable=True)
    )
    op.add_column(
        "assistant_messages", sa.Column("tool_call_id", sa.String(length=64), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("assistant_messages") as batch:
        batch.drop_column("tool_call_id")
        batch.drop_column("tool_calls")
