"""Tables of the crawl domain: the shared frontier of a crawl (one row per URL it found)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from common.timeutil import utcnow
from store.models import Base, BigIntPK


class CrawlPage(Base):
    """A URL of a crawl: queued → claimed (a worker has it) → crawled | failed | skipped.

    The row's id is also the ``seq`` of the page's result item, so pages stream in the order
    they were found. ``(job_id, url_key)`` is unique: two workers finding the same link insert
    it once.
    """

    __tablename__ = "crawl_pages"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    url_key: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    depth: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    reason: Mapped[str | None] = mapped_column(String(40), default=None)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    final_url: Mapped[str | None] = mapped_column(Text, default=None)
    content_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    size: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        Index("ux_crawl_pages_job_url", "job_id", "url_key", unique=True),
        Index("ix_crawl_pages_job_status", "job_id", "status", "id"),
        Index("ix_crawl_pages_job_hash", "job_id", "content_hash"),
    )
