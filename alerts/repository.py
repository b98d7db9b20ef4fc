"""Queries of the alerts domain. Functions take the caller's session and never commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, select, update
from sqlalchemy.orm import Session

from alerts.models import Alert, AlertEvent


def get(session: Session, org_id: str, alert_id: str) -> Alert | None:
    return session.scalar(select(Alert).where(Alert.id == alert_id, Alert.org_id == org_id))


def get_any(session: Session, alert_id: str) -> Alert | None:
    return session.get(Alert, alert_id, populate_existing=True)


def alerts_query(org_id: str) -> Select[Any]:
    """An organisation's rules (listed newest first by ``store.pagination``)."""
    return select(Alert).where(Alert.org_id == org_id)


def events_query(org_id: str, alert_id: str) -> Select[Any]:
    return select(AlertEvent).where(AlertEvent.org_id == org_id, AlertEvent.alert_id == alert_id)


def enabled_ids(session: Session, after_id: str, limit: int) -> Sequence[str]:
    """The next ``limit`` enabled rules past ``after_id`` (``ix_alerts_enabled_id``)."""
    return session.scalars(
        select(Alert.id)
        .where(Alert.enabled.is_(True), Alert.id > after_id)
        .order_by(Alert.id)
        .limit(limit)
    ).all()


def enabled_ids_for_org(session: Session, org_id: str, types: Iterable[str]) -> Sequence[str]:
    """An organisation's enabled rules of these condition types (``ix_alerts_org_type_enabled``)."""
    return session.scalars(
        select(Alert.id).where(
            Alert.org_id == org_id,
            Alert.condition_type.in_(list(types)),
            Alert.enabled.is_(True),
        )
    ).all()


def compare_and_set(session: Session, alert_id: str, version: int, values: dict[str, Any]) -> bool:
    """Write ``values`` and bump the version iff the rule is still at ``version``: of racing
    evaluations exactly one wins; the others get False and change nothing."""
    result = session.execute(
        update(Alert)
        .where(Alert.id == alert_id, Alert.version == version)
        .values(**values, version=version + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def get_event(session: Session, event_id: str) -> AlertEvent | None:
    return session.get(AlertEvent, event_id)


def any_enabled() -> bool:
    """Whether any rule is enabled (beat sends the evaluation only then; see
    ``config.queues.BEAT_SEND_ONLY_IF``)."""
    from store.db import read_session

    with read_session() as session:
        found = session.scalar(select(Alert.id).where(Alert.enabled.is_(True)).limit(1))
    return found is not None


def get_many(session: Session, alert_ids: Sequence[str]) -> list[Alert]:
    return list(session.scalars(select(Alert).where(Alert.id.in_(list(alert_ids)))).all())


def record_observations(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """``[{id, last_value, last_evaluated_at}]`` of rules whose state did not move: one batched
    UPDATE by primary key; the version is not bumped (nothing a transition depends on)."""
    if not rows:
        return
    table = cast(Table, Alert.__table__)
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values(last_value=bindparam("b_value"), last_evaluated_at=bindparam("b_at"))
    )  # Core executemany: a rule deleted meanwhile is simply not matched
    params = [
        {"b_id": r["id"], "b_value": r["last_value"], "b_at": r["last_evaluated_at"]} for r in rows
    ]
    session.execute(statement, params)
