"""Queries of the RAG tables (every read is scoped to an organisation)."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from rag.models import CallerUsage, Dataset, DatasetFile, Endpoint
from store import pagination

T = TypeVar("T")


def get(session: Session, model: type[T], org_id: str, row_id: str) -> T | None:
    row = session.get(model, row_id)
    return row if row is not None and getattr(row, "org_id") == org_id else None  # noqa: B009


def list_rows(
    session: Session,
    model: Any,
    org_id: str,
    *,
    limit: int,
    cursor: str | None,
    skip: int | None,
    descending: bool,
    where: tuple[Any, ...] = (),
) -> tuple[list[Any], str | None, int | None]:
    """A cursor page (skip None) or Syft Space's skip/limit page with the total."""
    query = select(model).where(model.org_id == org_id, *where)
    if skip is None:
        rows, next_cursor = pagination.list_page(
            session, query, model, limit=limit, cursor=cursor, descending=descending
        )
        return rows, next_cursor, None
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    ordered = query.order_by(*pagination.order(model, descending=descending))
    return list(session.scalars(ordered.offset(skip).limit(limit))), None, int(total)


def file_by_name(session: Session, dataset_id: str, name: str) -> DatasetFile | None:
    return session.scalar(
        select(DatasetFile).where(DatasetFile.dataset_id == dataset_id, DatasetFile.name == name)
    )


def files_of(session: Session, dataset_id: str, ids: list[str] | None = None) -> list[DatasetFile]:
    query = select(DatasetFile).where(DatasetFile.dataset_id == dataset_id)
    if ids:
        query = query.where(DatasetFile.id.in_(ids))
    return list(session.scalars(query.order_by(DatasetFile.created_at, DatasetFile.id)))


def file_content(session: Session, file_id: str) -> bytes:
    return session.scalar(select(DatasetFile.content).where(DatasetFile.id == file_id)) or b""


def set_file(session: Session, file_id: str, **values: Any) -> None:
    session.execute(update(DatasetFile).where(DatasetFile.id == file_id).values(**values))


def endpoint_by_slug(session: Session, slug: str) -> Endpoint | None:
    return session.scalar(select(Endpoint).where(Endpoint.slug == slug))


def datasets(session: Session, org_id: str, ids: list[str]) -> list[Dataset]:
    return list(
        session.scalars(select(Dataset).where(Dataset.org_id == org_id, Dataset.id.in_(ids)))
    )


def tokens_used(session: Session, endpoint_id: str, caller: str, day: str) -> int:
    row = session.get(CallerUsage, (endpoint_id, caller, day))
    return int(row.tokens) if row is not None else 0


def add_usage(session: Session, endpoint_id: str, caller: str, day: str, tokens: int) -> None:
    """Add a call's tokens (row-locked upsert: concurrent calls add exactly)."""
    row = session.get(CallerUsage, (endpoint_id, caller, day), with_for_update=True)
    if row is None:
        session.add(
            CallerUsage(endpoint_id=endpoint_id, caller=caller, day=day, tokens=tokens, requests=1)
        )
        return
    session.execute(
        update(CallerUsage)
        .where(
            CallerUsage.endpoint_id == endpoint_id,
            CallerUsage.caller == caller,
            CallerUsage.day == day,
        )
        .values(tokens=CallerUsage.tokens + tokens, requests=CallerUsage.requests + 1)
    )
