"""Queries of the deployments domain (keyset pagination on indexed columns)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from deployments.models import Deployment, DeploymentRevision
from store import pagination

LIVE_EXCLUDED = ("deleted",)


def get(
    session: Session, org_id: str, deployment_id: str, *, lock: bool = False
) -> Deployment | None:
    query = select(Deployment).where(Deployment.id == deployment_id, Deployment.org_id == org_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def get_any(session: Session, deployment_id: str, *, lock: bool = False) -> Deployment | None:
    """A deployment by id regardless of organisation (tasks, reconciler)."""
    query = select(Deployment).where(Deployment.id == deployment_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def get_by_name(session: Session, org_id: str, name: str) -> Deployment | None:
    """The organisation's live (not deleted) deployment of that name."""
    return session.scalars(
        select(Deployment).where(
            Deployment.org_id == org_id,
            Deployment.name == name,
            Deployment.deleted_at.is_(None),
        )
    ).first()


def list_live_names(session: Session, org_id: str) -> Sequence[Deployment]:
    return session.scalars(
        select(Deployment)
        .where(Deployment.org_id == org_id, Deployment.deleted_at.is_(None))
        .order_by(Deployment.created_at)
        .limit(500)
    ).all()


@dataclass(frozen=True)
class DeploymentFilter:
    statuses: tuple[str, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    descending: bool = True


def list_page(
    session: Session, org_id: str, flt: DeploymentFilter, *, limit: int, cursor: str | None
) -> tuple[list[Deployment], str | None]:
    query = select(Deployment).where(Deployment.org_id == org_id)
    if flt.statuses:
        query = query.where(Deployment.status.in_(flt.statuses))
    else:
        query = query.where(Deployment.status.not_in(LIVE_EXCLUDED))
    if flt.created_after is not None:
        query = query.where(Deployment.created_at > flt.created_after)
    if flt.created_before is not None:
        query = query.where(Deployment.created_at < flt.created_before)
    return pagination.list_page(
        session, query, Deployment, limit=limit, cursor=cursor, descending=flt.descending
    )


def any_live() -> bool:
    """Whether any deployment is not deleted (beat sends the reconciler only then; see
    ``config.queues.BEAT_SEND_ONLY_IF``)."""
    from store.db import read_session

    with read_session() as session:
        found = session.scalar(select(Deployment.id).where(Deployment.status != "deleted").limit(1))
    return found is not None


def to_reconcile(session: Session, limit: int = 200) -> Sequence[str]:
    """Ids of deployments the reconciler looks after (desired running, not failed)."""
    return session.scalars(
        select(Deployment.id)
        .where(
            Deployment.desired == "running",
            Deployment.status.in_(("running", "degraded", "deploying", "pending")),
        )
        .order_by(Deployment.updated_at)
        .limit(limit)
    ).all()


def claim_wake(session: Session, deployment_id: str) -> bool:
    """Clear `scaled_to_zero_at` if it is set (compare-and-set): True for the one caller that
    did, so concurrent requests to a sleeping deployment start one scale-up, not one each."""
    result = session.execute(
        update(Deployment)
        .where(Deployment.id == deployment_id, Deployment.scaled_to_zero_at.is_not(None))
        .values(scaled_to_zero_at=None)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def live_backend_states(session: Session, backend: str) -> Sequence[dict[str, object] | None]:
    """Stored backend states of every deployment that is not deleted (orphan sweeping)."""
    return session.scalars(
        select(Deployment.backend_state).where(
            Deployment.backend == backend, Deployment.deleted_at.is_(None)
        )
    ).all()


def revisions(session: Session, deployment_id: str) -> Sequence[DeploymentRevision]:
    return session.scalars(
        select(DeploymentRevision)
        .where(DeploymentRevision.deployment_id == deployment_id)
        .order_by(DeploymentRevision.revision.desc())
        .limit(100)
    ).all()


def get_revision(session: Session, deployment_id: str, revision: int) -> DeploymentRevision | None:
    return session.scalars(
        select(DeploymentRevision).where(
            DeploymentRevision.deployment_id == deployment_id,
            DeploymentRevision.revision == revision,
        )
    ).first()
