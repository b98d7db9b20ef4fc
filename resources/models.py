"""Tables of the resources domain: resources, their backups and their bindings to deployments."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from common.timeutil import utcnow
from store.models import Base, JSONType


def new_resource_id() -> str:
    return f"res_{secrets.token_hex(8)}"


def new_backup_id() -> str:
    return f"bkp_{secrets.token_hex(8)}"


def new_binding_id() -> str:
    return f"bnd_{secrets.token_hex(8)}"


class Resource(Base):
    """A provisioned database, key-value store, bucket or volume.

    ``state`` is where the backend keeps it (names, ports, directories: safe to show);
    ``secret_encrypted`` its credentials (a Fernet token, never shown outside /credentials).
    Status: provisioning → ready | failed; ready ⇄ degraded; deleting → deleted.
    """

    __tablename__ = "resources"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_resource_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    type: Mapped[str] = mapped_column(String(20))
    tier: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="provisioning")
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    limits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    backup_schedule: Mapped[str | None] = mapped_column(String(100), default=None)
    backup_retention_days: Mapped[int] = mapped_column(Integer, default=7)
    backup_retention_count: Mapped[int] = mapped_column(Integer, default=10)
    next_backup_at: Mapped[datetime | None] = mapped_column(default=None)
    state: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    secret_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    source: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        Index("ix_resources_org_created", "org_id", "created_at", "id"),
        Index("ix_resources_org_status_created", "org_id", "status", "created_at", "id"),
        Index("ix_resources_org_name", "org_id", "name"),
        Index("ix_resources_next_backup", "next_backup_at"),
    )


class ResourceBackup(Base):
    """One backup. ``fingerprint`` is what it must restore to (row counts + checksums per
    table, key counts …); ``verified_at`` is set once a scratch restore matched it."""

    __tablename__ = "resource_backups"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_backup_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    resource_id: Mapped[str] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    trigger: Mapped[str] = mapped_column(String(20), default="manual")
    method: Mapped[str | None] = mapped_column(String(40), default=None)
    location: Mapped[str | None] = mapped_column(Text, default=None)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    fingerprint: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    meta: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    verified_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        Index("ix_resource_backups_resource_created", "resource_id", "created_at", "id"),
        Index("ix_resource_backups_expires", "expires_at"),
    )


class ResourceBinding(Base):
    """A resource's variables injected into a deployment (``env_names`` as injected)."""

    __tablename__ = "resource_bindings"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_binding_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    deployment_id: Mapped[str] = mapped_column(String(40))
    resource_id: Mapped[str] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    env_prefix: Mapped[str] = mapped_column(String(40), default="")
    env_names: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_resource_bindings_deployment", "deployment_id", "created_at", "id"),
        Index("ix_resource_bindings_resource", "resource_id"),
    )
