"""Assistants: instances, conversations, messages, incoming-webhook deliveries, logs, usage.

Revision ID: assistants_0001
Revises: 0001_initial
Create Date: 2026-12-06 13:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import store.models

revision: str = "assistants_0001"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = ("assistants",)
depends_on: str | Sequence[str] | None = None

JSON = store.models.JSONType
TS = store.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "assistant_instances",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("backend", sa.String(length=20), nullable=False),
        sa.Column("plan", sa.String(length=20), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("temperature", sa.Float(), nullable=True),
        sa.Column("max_tokens", sa.Integer(), nullable=True),
        sa.Column("tools", JSON, nullable=False),
        sa.Column("message_template", sa.Text(), nullable=False),
        sa.Column("log_content", sa.Boolean(), nullable=False),
        sa.Column("webhook_secret_encrypted", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_assistant_instances_org_created", "assistant_instances", ["org_id", "created_at", "id"]
    )
    op.create_table(
        "assistant_conversations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("instance_id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["assistant_instances.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_assistant_conversations_instance_created",
        "assistant_conversations",
        ["instance_id", "created_at", "id"],
    )
    op.create_table(
        "assistant_messages",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("conversation_id", sa.String(length=40), nullable=False),
        sa.Column("instance_id", sa.String(length=40), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("dropped_turns", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["assistant_conversations.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_assistant_messages_conversation_created",
        "assistant_messages",
        ["conversation_id", "created_at", "id"],
    )
    op.create_table(
        "assistant_webhook_deliveries",
        sa.Column("instance_id", sa.String(length=40), nullable=False),
        sa.Column("webhook_id", sa.String(length=200), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["assistant_instances.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("instance_id", "webhook_id"),
    )
    op.create_table(
        "assistant_logs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("instance_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["assistant_instances.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_assistant_logs_instance_created", "assistant_logs", ["instance_id", "created_at", "id"]
    )
    op.create_table(
        "assistant_usage",
        sa.Column("instance_id", sa.String(length=40), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["assistant_instances.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("instance_id", "period"),
    )
    op.create_index("ix_assistant_usage_org_period", "assistant_usage", ["org_id", "period"])


def downgrade() -> None:
    op.drop_index("ix_assistant_usage_org_period", table_name="assistant_usage")
    op.drop_table("assistant_usage")
    op.drop_index("ix_assistant_logs_instance_created", table_name="assistant_logs")
    op.drop_table("assistant_logs")
    op.drop_table("assistant_webhook_deliveries")
    op.drop_index("ix_assistant_messages_conversation_created", table_name="assistant_messages")
    op.drop_table("assistant_messages")
    op.drop_index(
        "ix_assistant_conversations_instance_created", table_name="assistant_conversations"
    )
    op.drop_table("assistant_conversations")
    op.drop_index("ix_assistant_instances_org_created", table_name="assistant_instances")
    op.drop_table("assistant_instances")
