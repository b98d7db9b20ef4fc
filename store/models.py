"""SQLAlchemy 2 typed models of the spine: organisations, API keys, jobs and result items.

Domain packages (crawler, deployments, resources …) declare their own tables on the same
``Base`` and add their own Alembic revisions.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.timeutil import utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL, JSON elsewhere.
JSONType = (
    JSON().with_variant(postgresql.JSONB(), "postgresql").with_variant(sqlite.JSON(), "sqlite")
)
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSONType}


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    plan: Mapped[str] = mapped_column(String(50), default="free")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(32))
    last4: Mapped[str] = mapped_column(String(4))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Revoked (past) or, after a rotation with a grace period, valid until then (future).
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    #: The member (person or service account) the key acts for; ``org_id`` is its default
    #: organisation (``X-Organization-ID`` selects another one the member belongs to).
    member_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    #: ``<group>:read|write`` and ``admin``; ``["*"]``: every scope (keys made before scopes).
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=lambda: ["*"])
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    allowed_cidrs: Mapped[list[str] | None] = mapped_column(JSONType, default=None)
    #: Written at most once a minute per key, off the request path (``access.usage``).
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    #: The member that created the key (None: created by an admin command).
    created_by: Mapped[str | None] = mapped_column(String(36), default=None)


class Member(Base):
    """A person or a service account; it belongs to organisations through memberships."""

    __tablename__ = "members"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(20), default="person")  # person | service
    name: Mapped[str] = mapped_column(String(200), unique=True)
    default_org_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Membership(Base):
    """A member's role in an organisation: it caps the scopes of the member's keys there."""

    __tablename__ = "memberships"

    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[str] = mapped_column(
        ForeignKey("members.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(20), default="developer")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_memberships_member", "member_id", "org_id"),)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    input: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(default=0)
    delivery_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    result_deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    #: While ``running``: until when the worker holding it is known alive (it renews the lease;
    #: a lapsed lease re-queues the job). Null otherwise.
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        # Keyset pagination: every list query walks one of these in (created_at, id) order,
        # so page 10,000 costs what page 1 costs.
        Index("ix_jobs_org_created", "org_id", "created_at", "id"),
        Index("ix_jobs_org_status_created", "org_id", "status", "created_at", "id"),
        Index("ix_jobs_org_kind_created", "org_id", "kind", "created_at", "id"),
        # Beat tasks: expiry and reaping scan by state and time.
        Index("ix_jobs_status_expires", "status", "expires_at"),
        Index("ix_jobs_status_started", "status", "started_at"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_completed", "completed_at"),
    )


class ResultItem(Base):
    """One unit of a job's result (a crawled page, a batch line, a whole small result)."""

    __tablename__ = "result_items"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(2048), default="")
    content_type: Mapped[str] = mapped_column(String(100), default="application/json")
    body: Mapped[str | None] = mapped_column(Text, default=None)
    data: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ux_result_items_job_seq", "job_id", "seq", unique=True),)
