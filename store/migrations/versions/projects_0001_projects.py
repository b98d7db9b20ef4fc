"""Projects: projects, environments, deployments, env vars, volumes and TCP proxies.

Revision ID: projects_0001
Revises: 0001_initial
Create Date: 2026-12-06 13:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import store.models

revision: str = "projects_0001"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = ("projects",)
depends_on: str | Sequence[str] | None = None

JSON = store.models.JSONType
TS = store.models.UTCDateTime(timezone=True)


def _org() -> sa.Column[str]:
    return sa.Column(
        "org_id",
        sa.String(length=36),
        sa.ForeignKey("organizations.id", ondelete="CASCADE"),
        nullable=False,
    )


def _owner(name: str, table: str) -> sa.Column[str]:
    return sa.Column(
        name,
        sa.String(length=40),
        sa.ForeignKey(f"{table}.id", ondelete="CASCADE"),
        nullable=False,
    )


def _project() -> sa.Column[str]:
    return _owner("project_id", "projects")


def _environment() -> sa.Column[str]:
    return _owner("environment_id", "project_environments")


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(length=40), primary_key=True),
        _org(),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("git_repository", sa.Text(), nullable=True),
        sa.Column("git_branch", sa.String(length=255), nullable=True),
        sa.Column("build_pack", sa.String(length=20), nullable=False),
        sa.Column("docker_image", sa.Text(), nullable=True),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=True),
        sa.Column("health_check_path", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("services", JSON, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
        sa.UniqueConstraint("org_id", "slug", name="uq_projects_org_slug"),
    )
    op.create_index("ix_projects_org_created", "projects", ["org_id", "created_at", "id"])
    op.create_table(
        "project_environments",
        sa.Column("id", sa.String(length=40), primary_key=True),
        _org(),
        _project(),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=True),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("state", JSON, nullable=True),
        sa.Column("active_deployment_id", sa.String(length=40), nullable=True),
        sa.Column("service_overrides", JSON, nullable=False),
        sa.Column("accounted_at", TS, nullable=True),
        sa.Column("replica_seconds", sa.Float(), nullable=False),
        sa.Column("replica_seconds_billed", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_project_environments_name"),
    )
    op.create_index(
        "ix_project_environments_project",
        "project_environments",
        ["project_id", "created_at", "id"],
    )
    op.create_table(
        "project_deployments",
        sa.Column("id", sa.String(length=40), primary_key=True),
        _org(),
        _project(),
        _environment(),
        sa.Column("environment", sa.String(length=63), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("git_commit", sa.String(length=64), nullable=True),
        sa.Column("git_branch", sa.String(length=255), nullable=True),
        sa.Column("triggered_by", sa.String(length=40), nullable=False),
        sa.Column("rollback_of", sa.String(length=40), nullable=True),
        sa.Column("artifact", JSON, nullable=True),
        sa.Column("release", JSON, nullable=True),
        sa.Column("env_encrypted", sa.Text(), nullable=True),
        sa.Column("secret_keys", JSON, nullable=False),
        sa.Column("build_log", JSON, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index(
        "ix_project_deployments_project",
        "project_deployments",
        ["project_id", "created_at", "id"],
    )
    op.create_index(
        "ix_project_deployments_env_status", "project_deployments", ["environment_id", "status"]
    )
    op.create_table(
        "project_env_vars",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _org(),
        _environment(),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("value_encrypted", sa.Text(), nullable=False),
        sa.Column("secret", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("environment_id", "key", name="uq_project_env_vars_key"),
    )
    op.create_table(
        "project_volumes",
        sa.Column("id", sa.String(length=40), primary_key=True),
        _org(),
        _project(),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("mount_path", sa.String(length=255), nullable=False),
        sa.Column("size_gb", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_project_volumes_name"),
    )
    op.create_index(
        "ix_project_volumes_project", "project_volumes", ["project_id", "created_at", "id"]
    )
    op.create_table(
        "project_tcp_proxies",
        sa.Column("id", sa.String(length=40), primary_key=True),
        _org(),
        _project(),
        _environment(),
        sa.Column("service", sa.String(length=63), nullable=False),
        sa.Column("external_port", sa.Integer(), nullable=False, unique=True),
        sa.Column("target_port", sa.Integer(), nullable=False),
        sa.Column("allowlist", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "project_bindings",
        sa.Column("id", sa.String(length=40), primary_key=True),
        _org(),
        _environment(),
        sa.Column("resource_id", sa.String(length=40), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=True),
        sa.Column("applied_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("environment_id", "resource_id", name="uq_project_bindings_resource"),
    )
    op.create_index("ix_project_bindings_resource", "project_bindings", ["resource_id"])


def downgrade() -> None:
    op.drop_index("ix_project_bindings_resource", table_name="project_bindings")
    op.drop_table("project_bindings")
    op.drop_table("project_tcp_proxies")
    op.drop_index("ix_project_volumes_project", table_name="project_volumes")
    op.drop_table("project_volumes")
    op.drop_table("project_env_vars")
    op.drop_index("ix_project_deployments_env_status", table_name="project_deployments")
    op.drop_index("ix_project_deployments_project", table_name="project_deployments")
    op.drop_table("project_deployments")
    op.drop_index("ix_project_environments_project", table_name="project_environments")
    op.drop_table("project_environments")
    op.drop_index("ix_projects_org_created", table_name="projects")
    op.drop_table("projects")
