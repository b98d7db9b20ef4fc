"""Tables of the deployments domain: the deployment (desired + observed state) and its revisions."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from common.timeutil import utcnow
from store.models import Base, JSONType


def new_deployment_id() -> str:
    return f"dep_{secrets.token_hex(8)}"


class Deployment(Base):
    """One deployment: the desired state (a revision) and what the backend last observed."""

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_deployment_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    model: Mapped[str] = mapped_column(String(200))
    model_path: Mapped[str] = mapped_column(String(1000))
    runtime: Mapped[str] = mapped_column(String(20))
    gpu_type: Mapped[str | None] = mapped_column(String(100), default=None)
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    replicas_min: Mapped[int] = mapped_column(Integer, default=1)
    replicas_max: Mapped[int] = mapped_column(Integer, default=1)
    env_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    env_keys: Mapped[list[str]] = mapped_column(JSONType, default=list)
    runtime_options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    context_length: Mapped[int | None] = mapped_column(Integer, default=None)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    # desired: running | stopped | deleted; status: the observed lifecycle state.
    desired: Mapped[str] = mapped_column(String(20), default="running")
    status: Mapped[str] = mapped_column(String(20), default="pending")
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    endpoint: Mapped[str | None] = mapped_column(String(500), default=None)
    endpoints: Mapped[list[str]] = mapped_column(JSONType, default=list)
    ready_replicas: Mapped[int] = mapped_column(Integer, default=0)
    backend: Mapped[str] = mapped_column(String(20))
    backend_state: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    # Set while a deployment with replicas_min = 0 runs no replica for want of requests.
    scaled_to_zero_at: Mapped[datetime | None] = mapped_column(default=None)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    gpu_seconds_billed: Mapped[int] = mapped_column(Integer, default=0)
    accounted_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        Index("ix_deployments_org_created", "org_id", "created_at", "id"),
        Index("ix_deployments_org_status_created", "org_id", "status", "created_at", "id"),
        Index("ix_deployments_org_name", "org_id", "name"),
        Index("ix_deployments_desired", "desired"),
    )


class DeploymentRevision(Base):
    """An immutable snapshot of a deployment's configuration; rollback copies one forward."""

    __tablename__ = "deployment_revisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    env_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    reason: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ux_deployment_revisions", "deployment_id", "revision", unique=True),)
