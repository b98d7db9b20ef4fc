"""Queries of the resources domain (keyset pagination on indexed columns)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from resources.models import Resource, ResourceBackup, ResourceBinding
from store import pagination

LIVE = ("provisioning", "ready", "degraded", "failed", "deleting")


def get(session: Session, org_id: str, resource_id: str, *, lock: bool = False) -> Resource | None:
    query = select(Resource).where(Resource.id == resource_id, Resource.org_id == org_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def get_any(session: Session, resource_id: str, *, lock: bool = False) -> Resource | None:
    """A resource by id regardless of organisation (tasks)."""
    query = select(Resource).where(Resource.id == resource_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def get_by_name(session: Session, org_id: str, name: str) -> Resource | None:
    return session.scalars(
        select(Resource).where(
            Resource.org_id == org_id, Resource.name == name, Resource.deleted_at.is_(None)
        )
    ).first()


@dataclass(frozen=True)
class ResourceFilter:
    statuses: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    descending: bool = True


def list_page(
    session: Session, org_id: str, flt: ResourceFilter, *, limit: int, cursor: str | None
) -> tuple[list[Resource], str | None]:
    query = select(Resource).where(Resource.org_id == org_id)
    query = query.where(Resource.status.in_(flt.statuses or LIVE))
    if flt.types:
        query = query.where(Resource.type.in_(flt.types))
    if flt.created_after is not None:
        query = query.where(Resource.created_at > flt.created_after)
    if flt.created_before is not None:
        query = query.where(Resource.created_at < flt.created_before)
    return pagination.list_page(
        session, query, Resource, limit=limit, cursor=cursor, descending=flt.descending
    )


def get_backup(session: Session, resource_id: str, backup_id: str) -> ResourceBackup | None:
    return session.scalars(
        select(ResourceBackup).where(
            ResourceBackup.id == backup_id,
            ResourceBackup.resource_id == resource_id,
            ResourceBackup.deleted_at.is_(None),
        )
    ).first()


def get_backup_any(session: Session, backup_id: str) -> ResourceBackup | None:
    return session.get(ResourceBackup, backup_id)


def list_backups(
    session: Session, resource_id: str, *, limit: int, cursor: str | None
) -> tuple[list[ResourceBackup], str | None]:
    query = select(ResourceBackup).where(
        ResourceBackup.resource_id == resource_id, ResourceBackup.deleted_at.is_(None)
    )
    return pagination.list_page(session, query, ResourceBackup, limit=limit, cursor=cursor)


def completed_backups(session: Session, resource_id: str) -> Sequence[ResourceBackup]:
    """Completed, not deleted backups of a resource (PITR bases), oldest first."""
    return session.scalars(
        select(ResourceBackup)
        .where(
            ResourceBackup.resource_id == resource_id,
            ResourceBackup.status == "completed",
            ResourceBackup.deleted_at.is_(None),
        )
        .order_by(ResourceBackup.created_at)
    ).all()


def backups_of(session: Session, resource_id: str) -> Sequence[ResourceBackup]:
    """Every not-deleted backup of a resource, whatever its status."""
    return session.scalars(
        select(ResourceBackup).where(
            ResourceBackup.resource_id == resource_id, ResourceBackup.deleted_at.is_(None)
        )
    ).all()


def latest_backup(session: Session, resource_id: str) -> ResourceBackup | None:
    return session.scalars(
        select(ResourceBackup)
        .where(ResourceBackup.resource_id == resource_id, ResourceBackup.status == "completed")
        .order_by(ResourceBackup.completed_at.desc())
        .limit(1)
    ).first()


def in_progress(session: Session, limit: int = 200) -> Sequence[Resource]:
    return session.scalars(
        select(Resource).where(Resource.status == "provisioning").limit(limit)
    ).all()


def backups_in_progress(session: Session, limit: int = 200) -> Sequence[ResourceBackup]:
    return session.scalars(
        select(ResourceBackup).where(ResourceBackup.status.in_(("pending", "running"))).limit(limit)
    ).all()


def due_for_backup(session: Session, now: datetime, limit: int = 100) -> Sequence[Resource]:
    return session.scalars(
        select(Resource)
        .where(Resource.next_backup_at <= now, Resource.status.in_(("ready", "degraded")))
        .order_by(Resource.next_backup_at)
        .limit(limit)
    ).all()


def expired_backups(session: Session, now: datetime, limit: int = 100) -> Sequence[ResourceBackup]:
    return session.scalars(
        select(ResourceBackup)
        .where(ResourceBackup.expires_at <= now, ResourceBackup.deleted_at.is_(None))
        .limit(limit)
    ).all()


def over_backup_count(session: Session, limit: int = 100) -> list[tuple[str, int]]:
    """(resource id, backups to keep) of resources holding more completed backups than their
    ``backup_retention_count``."""
    rows = session.execute(
        select(ResourceBackup.resource_id, Resource.backup_retention_count)
        .join(Resource, Resource.id == ResourceBackup.resource_id)
        .where(ResourceBackup.status == "completed", ResourceBackup.deleted_at.is_(None))
        .group_by(ResourceBackup.resource_id, Resource.backup_retention_count)
        .having(func.count() > Resource.backup_retention_count)
        .limit(limit)
    ).all()
    return [(str(r[0]), int(r[1])) for r in rows]


def set_backup_expiry(session: Session, resource_id: str, retention: timedelta) -> None:
    """Completed backups of a resource expire ``retention`` after they completed."""
    for backup in completed_backups(session, resource_id):
        if backup.completed_at is not None:
            backup.expires_at = backup.completed_at + retention


def live_of(session: Session, type_: str, tier: str) -> Sequence[Resource]:
    return session.scalars(
        select(Resource).where(
            Resource.type == type_,
            Resource.tier == tier,
            Resource.status.in_(("ready", "degraded")),
        )
    ).all()


def bindings_of_deployment(session: Session, deployment_id: str) -> Sequence[ResourceBinding]:
    return session.scalars(
        select(ResourceBinding)
        .where(ResourceBinding.deployment_id == deployment_id)
        .order_by(ResourceBinding.created_at, ResourceBinding.id)
    ).all()


def bindings_of_resource(session: Session, resource_id: str) -> Sequence[ResourceBinding]:
    return session.scalars(
        select(ResourceBinding).where(ResourceBinding.resource_id == resource_id)
    ).all()


def get_binding(session: Session, deployment_id: str, binding_id: str) -> ResourceBinding | None:
    return session.scalars(
        select(ResourceBinding).where(
            ResourceBinding.id == binding_id, ResourceBinding.deployment_id == deployment_id
        )
    ).first()
