"""Tables of the RAG domain: datasets, their files, model providers, endpoints, policies and
per-caller daily usage. The chunks themselves live in the index (``rag.backends``)."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, deferred, mapped_column

from common.timeutil import utcnow
from store.models import Base


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def new_dataset_id() -> str:
    return _id("ds")


def new_file_id() -> str:
    return _id("file")


def new_provider_id() -> str:
    return _id("prov")


def new_endpoint_id() -> str:
    return _id("ep")


def new_policy_id() -> str:
    return _id("pol")


class Dataset(Base):
    __tablename__ = "rag_datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_dataset_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    dtype: Mapped[str] = mapped_column(String(30))
    configuration: Mapped[dict[str, Any]] = mapped_column(default=dict)
    embedding_model: Mapped[str] = mapped_column(String(200))
    chunk_size: Mapped[int] = mapped_column(Integer)
    chunk_overlap: Mapped[int] = mapped_column(Integer)
    summary: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_rag_datasets_org_created", "org_id", "created_at", "id"),)


class DatasetFile(Base):
    """One source of a dataset (an upload or a crawled page); its bytes stay for re-indexing."""

    __tablename__ = "rag_files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_file_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("rag_datasets.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(1024))
    source: Mapped[str] = mapped_column(String(2048))
    media_type: Mapped[str] = mapped_column(String(60))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    content_hash: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes | None] = deferred(mapped_column(LargeBinary, default=None))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_rag_files_dataset_created", "dataset_id", "created_at", "id"),
        Index("ix_rag_files_dataset_name", "dataset_id", "name"),
    )


class Provider(Base):
    __tablename__ = "rag_providers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_provider_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(30))
    base_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    api_key_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    models: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"names": [...]}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_rag_providers_org_created", "org_id", "created_at", "id"),)


class Endpoint(Base):
    __tablename__ = "rag_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_endpoint_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_rag_endpoints_org_created", "org_id", "created_at", "id"),)


class Policy(Base):
    __tablename__ = "rag_policies"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_policy_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(20))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_rag_policies_org_created", "org_id", "created_at", "id"),)


class CallerUsage(Base):
    """Tokens one caller spent on one endpoint on one UTC day (budget policies)."""

    __tablename__ = "rag_usage"

    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("rag_endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    caller: Mapped[str] = mapped_column(String(80), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
