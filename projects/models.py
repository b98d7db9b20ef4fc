"""Tables of the projects domain: projects, environments, deployments (the release history),
env vars (encrypted), volumes and TCP proxies."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from common.timeutil import utcnow
from store.models import Base, JSONType


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def new_project_id() -> str:
    return _id("prj")


def new_environment_id() -> str:
    return _id("env")


def new_deployment_id() -> str:
    return _id("pdep")


def new_volume_id() -> str:
    return _id("vol")


def new_proxy_id() -> str:
    return _id("tcp")


class Project(Base):
    """An application: where its source is and how it is built and checked."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_project_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    slug: Mapped[str] = mapped_column(String(63))
    git_repository: Mapped[str | None] = mapped_column(Text, default=None)
    git_branch: Mapped[str | None] = mapped_column(String(255), default=None)
    build_pack: Mapped[str] = mapped_column(String(20), default="procfile")
    docker_image: Mapped[str | None] = mapped_column(Text, default=None)
    port: Mapped[int] = mapped_column(Integer, default=8000)
    domain: Mapped[str | None] = mapped_column(String(255), default=None)
    health_check_path: Mapped[str] = mapped_column(String(255), default="/")
    status: Mapped[str] = mapped_column(String(20), default="active")
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    services: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        UniqueConstraint("org_id", "slug", name="uq_projects_org_slug"),
        Index("ix_projects_org_created", "org_id", "created_at", "id"),
    )


class ProjectEnvironment(Base):
    """One environment of a project (``production`` from creation); ``state`` is its backend's
    bookkeeping (``BackendState``)."""

    __tablename__ = "project_environments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_environment_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    domain: Mapped[str | None] = mapped_column(String(255), default=None)
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(20), default="created")
    state: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    active_deployment_id: Mapped[str | None] = mapped_column(String(40), default=None)
    service_overrides: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Replica-seconds metering (``GET /v1/usage``): accrued at each observation.
    accounted_at: Mapped[datetime | None] = mapped_column(default=None)
    replica_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    replica_seconds_billed: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_project_environments_name"),
        Index("ix_project_environments_project", "project_id", "created_at", "id"),
    )


class ProjectDeployment(Base):
    """One entry of an environment's history: a build + rollout, or a rollback of an earlier
    one (``rollback_of``). ``release`` is the stored ``ReleaseSpec`` without env values; the env
    snapshot is ``env_encrypted`` (a Fernet token of ``{key: value}``)."""

    __tablename__ = "project_deployments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_deployment_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    environment_id: Mapped[str] = mapped_column(
        ForeignKey("project_environments.id", ondelete="CASCADE")
    )
    environment: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    git_commit: Mapped[str | None] = mapped_column(String(64), default=None)
    git_branch: Mapped[str | None] = mapped_column(String(255), default=None)
    triggered_by: Mapped[str] = mapped_column(String(40), default="api")
    rollback_of: Mapped[str | None] = mapped_column(String(40), default=None)
    artifact: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    release: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    env_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    secret_keys: Mapped[list[str]] = mapped_column(JSONType, default=list)
    build_log: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_project_deployments_project", "project_id", "created_at", "id"),
        Index("ix_project_deployments_env_status", "environment_id", "status"),
    )


class ProjectEnvVar(Base):
    """One env var of one environment; the value is a Fernet token (the resources' box)."""

    __tablename__ = "project_env_vars"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    environment_id: Mapped[str] = mapped_column(
        ForeignKey("project_environments.id", ondelete="CASCADE")
    )
    key: Mapped[str] = mapped_column(String(255))
    value_encrypted: Mapped[str] = mapped_column(Text)
    secret: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("environment_id", "key", name="uq_project_env_vars_key"),)


class ProjectVolume(Base):
    __tablename__ = "project_volumes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_volume_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    mount_path: Mapped[str] = mapped_column(String(255))
    size_gb: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_project_volumes_name"),
        Index("ix_project_volumes_project", "project_id", "created_at", "id"),
    )


class ProjectTcpProxy(Base):
    """A TCP entry point to one service of one environment; ``allowlist`` is
    ``[{cidr, description}]`` (empty: every connection refused). A disabled proxy
    (``DELETE`` without ``?permanent=true``) runs nothing but keeps its external port for the
    service, as a NodePort allocation is kept."""

    __tablename__ = "project_tcp_proxies"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_proxy_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    environment_id: Mapped[str] = mapped_column(
        ForeignKey("project_environments.id", ondelete="CASCADE")
    )
    service: Mapped[str] = mapped_column(String(63))
    external_port: Mapped[int] = mapped_column(Integer, unique=True)
    target_port: Mapped[int] = mapped_column(Integer)
    allowlist: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def new_binding_id() -> str:
    return _id("pbnd")


class ProjectBinding(Base):
    """A resource's connection variables injected into an environment on its next deploy
    (``kind``: ``binding``, or ``storage`` for a blob resource the project created);
    ``applied_fingerprint``: a digest of the variables the last deploy injected (a rotation
    since makes the binding stale)."""

    __tablename__ = "project_bindings"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_binding_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    environment_id: Mapped[str] = mapped_column(
        ForeignKey("project_environments.id", ondelete="CASCADE")
    )
    resource_id: Mapped[str] = mapped_column(String(40))
    role: Mapped[str] = mapped_column(String(20), default="readwrite")
    kind: Mapped[str] = mapped_column(String(20), default="binding")
    name: Mapped[str | None] = mapped_column(String(63), default=None)
    applied_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("environment_id", "resource_id", name="uq_project_bindings_resource"),
        Index("ix_project_bindings_resource", "resource_id"),
    )
