"""Access: key scopes, expiry, allowed CIDRs and last use; members of several organisations and
their roles; the audit log. Every existing key becomes a key of its organisation's
service-account member (an owner) with every scope.

Revision ID: access_0001
Revises: 0001_initial
Create Date: 2026-12-06 13:40:00
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import store.models

revision: str = "access_0001"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = ("access",)
depends_on: str | Sequence[str] | None = None

JSON = store.models.JSONType
TS = store.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("default_org_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "memberships",
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("member_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("org_id", "member_id"),
    )
    op.create_index("ix_memberships_member", "memberships", ["member_id", "org_id"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("member_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("scopes", JSON, nullable=True))
        batch.add_column(sa.Column("expires_at", TS, nullable=True))
        batch.add_column(sa.Column("allowed_cidrs", JSON, nullable=True))
        batch.add_column(sa.Column("last_used_at", TS, nullable=True))
        batch.add_column(sa.Column("created_by", sa.String(length=36), nullable=True))
        batch.create_index("ix_api_keys_member_id", ["member_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=True),
        sa.Column("actor_member", sa.String(length=36), nullable=True),
        sa.Column("actor_key_id", sa.String(length=36), nullable=True),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("target_type", sa.String(length=50), nullable=True),
        sa.Column("target_id", sa.String(length=200), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=300), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_org_created", "audit_log", ["org_id", "created_at", "id"])
    op.create_index("ix_audit_log_created", "audit_log", ["created_at"])
    op.create_table(
        "api_key_addresses",
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("first_seen_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id", "ip"),
    )
    _backfill()


def _backfill() -> None:
    """Each organisation that has keys gets a service-account member (owner); its keys act for
    it with every scope (``["*"]``)."""
    bind = op.get_bind()
    keys = sa.table(
        "api_keys",
        sa.column("org_id", sa.String),
        sa.column("member_id", sa.String),
        sa.column("scopes", JSON),
    )
    members = sa.table(
        "members",
        sa.column("id", sa.String),
        sa.column("kind", sa.String),
        sa.column("name", sa.String),
        sa.column("default_org_id", sa.String),
        sa.column("created_at", TS),
    )
    memberships = sa.table(
        "memberships",
        sa.column("org_id", sa.String),
        sa.column("member_id", sa.String),
        sa.column("role", sa.String),
        sa.column("created_at", TS),
    )
    now = store.models.utcnow()
    org_ids = [row[0] for row in bind.execute(sa.select(keys.c.org_id).distinct())]
    for org_id in org_ids:
        member_id = str(uuid.uuid4())
        bind.execute(
            members.insert().values(
                id=member_id,
                kind="service",
                name=f"service-account@{org_id}",
                default_org_id=org_id,
                created_at=now,
            )
        )
        bind.execute(
            memberships.insert().values(
                org_id=org_id, member_id=member_id, role="owner", created_at=now
            )
        )
        bind.execute(
            keys.update().where(keys.c.org_id == org_id).values(member_id=member_id, scopes=["*"])
        )


def downgrade() -> None:
    op.drop_table("api_key_addresses")
    op.drop_index("ix_audit_log_created", table_name="audit_log")
    op.drop_index("ix_audit_log_org_created", table_name="audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_member_id")
        for column in (
            "created_by",
            "last_used_at",
            "allowed_cidrs",
            "expires_at",
            "scopes",
            "member_id",
        ):
            batch.drop_column(column)
    op.drop_index("ix_memberships_member", table_name="memberships")
    op.drop_table("memberships")
    op.drop_table("members")
