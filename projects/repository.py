"""Queries of the projects domain (keyset pagination on indexed columns)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from projects.models import (
    Project,
    ProjectBinding,
    ProjectDeployment,
    ProjectEnvironment,
    ProjectEnvVar,
    ProjectTcpProxy,
    ProjectVolume,
)
from projects.schemas import ACTIVE_STATUSES
from store import pagination


def get_project(
    session: Session, org_id: str, project_id: str, *, lock: bool = False
) -> Project | None:
    query = select(Project).where(
        Project.id == project_id, Project.org_id == org_id, Project.deleted_at.is_(None)
    )
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def get_project_any(session: Session, project_id: str) -> Project | None:
    return session.get(Project, project_id)


def slug_taken(session: Session, org_id: str, slug: str) -> bool:
    found = session.scalars(
        select(Project.id).where(Project.org_id == org_id, Project.slug == slug)
    ).first()
    return found is not None


def list_projects(
    session: Session, org_id: str, *, limit: int, cursor: str | None
) -> tuple[list[Project], str | None]:
    query = select(Project).where(Project.org_id == org_id, Project.deleted_at.is_(None))
    return pagination.list_page(session, query, Project, limit=limit, cursor=cursor)


def environments(session: Session, project_id: str) -> Sequence[ProjectEnvironment]:
    return session.scalars(
        select(ProjectEnvironment)
        .where(ProjectEnvironment.project_id == project_id)
        .order_by(ProjectEnvironment.created_at, ProjectEnvironment.id)
    ).all()


def environment(
    session: Session,
    project_id: str,
    *,
    name: str | None = None,
    env_id: str | None = None,
    lock: bool = False,
) -> ProjectEnvironment | None:
    query = select(ProjectEnvironment).where(ProjectEnvironment.project_id == project_id)
    if name is not None:
        query = query.where(ProjectEnvironment.name == name)
    if env_id is not None:
        query = query.where(ProjectEnvironment.id == env_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def environment_any(session: Session, env_id: str) -> ProjectEnvironment | None:
    return session.get(ProjectEnvironment, env_id)


def live_environments(session: Session, org_id: str | None = None) -> Sequence[ProjectEnvironment]:
    """Environments with an active release (the supervisor's work list), of one organisation
    when ``org_id`` is given."""
    query = select(ProjectEnvironment).where(ProjectEnvironment.active_deployment_id.is_not(None))
    if org_id is not None:
        query = query.where(ProjectEnvironment.org_id == org_id)
    return session.scalars(query.order_by(ProjectEnvironment.id)).all()


def any_live() -> bool:
    """Whether any environment runs a release (beat sends the supervisor only then)."""
    from store.db import read_session

    with read_session() as session:
        found = session.scalars(
            select(ProjectEnvironment.id)
            .where(ProjectEnvironment.active_deployment_id.is_not(None))
            .limit(1)
        ).first()
    return found is not None


def deployment(
    session: Session, project_id: str, deployment_id: str, *, lock: bool = False
) -> ProjectDeployment | None:
    query = select(ProjectDeployment).where(
        ProjectDeployment.id == deployment_id, ProjectDeployment.project_id == project_id
    )
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def deployment_any(
    session: Session, deployment_id: str, *, lock: bool = False
) -> ProjectDeployment | None:
    query = select(ProjectDeployment).where(ProjectDeployment.id == deployment_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def active_deployments(
    session: Session, environment_id: str, *, before: ProjectDeployment | None = None
) -> Sequence[ProjectDeployment]:
    query = select(ProjectDeployment).where(
        ProjectDeployment.environment_id == environment_id,
        ProjectDeployment.status.in_(ACTIVE_STATUSES),
    )
    if before is not None:
        query = query.where(
            ProjectDeployment.id != before.id, ProjectDeployment.created_at <= before.created_at
        )
    return session.scalars(query.order_by(ProjectDeployment.created_at)).all()


def list_deployments(
    session: Session,
    project_id: str,
    *,
    environment_id: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[ProjectDeployment], str | None]:
    query = select(ProjectDeployment).where(ProjectDeployment.project_id == project_id)
    if environment_id is not None:
        query = query.where(ProjectDeployment.environment_id == environment_id)
    if status is not None:
        query = query.where(ProjectDeployment.status == status)
    return pagination.list_page(session, query, ProjectDeployment, limit=limit, cursor=cursor)


def recent_deployments(
    session: Session, environment_id: str, limit: int = 20
) -> Sequence[ProjectDeployment]:
    return session.scalars(
        select(ProjectDeployment)
        .where(ProjectDeployment.environment_id == environment_id)
        .order_by(ProjectDeployment.created_at.desc(), ProjectDeployment.id.desc())
        .limit(limit)
    ).all()


def env_vars(session: Session, environment_id: str) -> Sequence[ProjectEnvVar]:
    return session.scalars(
        select(ProjectEnvVar)
        .where(ProjectEnvVar.environment_id == environment_id)
        .order_by(ProjectEnvVar.key)
    ).all()


def env_var(session: Session, environment_id: str, key: str) -> ProjectEnvVar | None:
    return session.scalars(
        select(ProjectEnvVar).where(
            ProjectEnvVar.environment_id == environment_id, ProjectEnvVar.key == key
        )
    ).first()


def volumes(session: Session, project_id: str) -> Sequence[ProjectVolume]:
    return session.scalars(
        select(ProjectVolume)
        .where(ProjectVolume.project_id == project_id)
        .order_by(ProjectVolume.created_at, ProjectVolume.id)
    ).all()


def tcp_proxies(session: Session, environment_id: str) -> Sequence[ProjectTcpProxy]:
    return session.scalars(
        select(ProjectTcpProxy)
        .where(ProjectTcpProxy.environment_id == environment_id)
        .order_by(ProjectTcpProxy.created_at, ProjectTcpProxy.id)
    ).all()


def tcp_proxies_of_project(session: Session, project_id: str) -> Sequence[ProjectTcpProxy]:
    return session.scalars(
        select(ProjectTcpProxy).where(ProjectTcpProxy.project_id == project_id)
    ).all()


def tcp_proxy(session: Session, org_id: str, proxy_id: str) -> ProjectTcpProxy | None:
    return session.scalars(
        select(ProjectTcpProxy).where(
            ProjectTcpProxy.id == proxy_id, ProjectTcpProxy.org_id == org_id
        )
    ).first()


def used_external_ports(session: Session) -> set[int]:
    return set(session.scalars(select(ProjectTcpProxy.external_port)).all())


def binding(session: Session, environment_id: str, resource_id: str) -> ProjectBinding | None:
    return session.scalars(
        select(ProjectBinding).where(
            ProjectBinding.environment_id == environment_id,
            ProjectBinding.resource_id == resource_id,
        )
    ).first()


def bindings_of_environment(session: Session, environment_id: str) -> Sequence[ProjectBinding]:
    return session.scalars(
        select(ProjectBinding)
        .where(ProjectBinding.environment_id == environment_id)
        .order_by(ProjectBinding.created_at, ProjectBinding.id)
    ).all()


def bindings_of_resource(session: Session, resource_id: str) -> Sequence[ProjectBinding]:
    return session.scalars(
        select(ProjectBinding)
        .where(ProjectBinding.resource_id == resource_id)
        .order_by(ProjectBinding.created_at, ProjectBinding.id)
    ).all()
