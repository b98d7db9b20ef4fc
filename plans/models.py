"""Tables of the plans domain: plans and per-period usage counters."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from common.timeutil import utcnow
from store.models import Base


class Plan(Base):
    """A named set of limits; ``organizations.plan`` holds the plan's name."""

    __tablename__ = "plans"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    pages_per_month: Mapped[int] = mapped_column(BigInteger)
    concurrent_jobs: Mapped[int] = mapped_column(Integer)
    gpu_seconds_per_month: Mapped[int] = mapped_column(BigInteger)
    max_pages_per_crawl: Mapped[int] = mapped_column(Integer)
    read_per_minute: Mapped[int] = mapped_column(Integer)
    write_per_minute: Mapped[int] = mapped_column(Integer)
    # Backup retention a resource may ask for (days a backup is kept, backups kept).
    max_backup_retention_days: Mapped[int] = mapped_column(Integer, default=7)
    max_backup_retention_count: Mapped[int] = mapped_column(Integer, default=10)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class UsageCounter(Base):
    """Metered usage that no job row records by itself (e.g. GPU seconds), per calendar month."""

    __tablename__ = "usage_counters"

    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    period: Mapped[str] = mapped_column(String(7), primary_key=True)  # "2026-11"
    metric: Mapped[str] = mapped_column(String(40), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
