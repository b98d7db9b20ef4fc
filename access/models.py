"""The audit log: one row per change, per denied call and per key use from a new address."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from common.timeutil import utcnow
from store.models import Base, new_id


class AuditRecord(Base):
    __tablename__ = "audit_log"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    #: None: a denied call that named no organisation it may see (an unknown key).
    org_id: Mapped[str | None] = mapped_column(String(36), default=None)
    actor_member: Mapped[str | None] = mapped_column(String(36), default=None)
    actor_key_id: Mapped[str | None] = mapped_column(String(36), default=None)
    action: Mapped[str] = mapped_column(String(100))
    target_type: Mapped[str | None] = mapped_column(String(50), default=None)
    target_id: Mapped[str | None] = mapped_column(String(200), default=None)
    request_id: Mapped[str | None] = mapped_column(String(64), default=None)
    ip: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(300), default=None)
    status: Mapped[int] = mapped_column(Integer, default=200)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_audit_log_org_created", "org_id", "created_at", "id"),
        Index("ix_audit_log_created", "created_at"),
    )


class KeyAddress(Base):
    """An address a key was used from (its first use from a new one is audited)."""

    __tablename__ = "api_key_addresses"

    key_id: Mapped[str] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
