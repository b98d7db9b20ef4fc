"""Queries of the assistants domain (no commits: the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from assistants.models import (
    AssistantConversation,
    AssistantInstance,
    AssistantLog,
    AssistantMessage,
    AssistantUsage,
    AssistantWebhookDelivery,
)
from store import pagination


def get_instance(session: Session, org_id: str, instance_id: str) -> AssistantInstance | None:
    return session.scalars(
        select(AssistantInstance).where(
            AssistantInstance.id == instance_id,
            AssistantInstance.org_id == org_id,
            AssistantInstance.deleted_at.is_(None),
        )
    ).first()


def get_instance_any(session: Session, instance_id: str) -> AssistantInstance | None:
    """An instance of any organisation (incoming webhooks carry no API key)."""
    return session.scalars(
        select(AssistantInstance).where(
            AssistantInstance.id == instance_id, AssistantInstance.deleted_at.is_(None)
        )
    ).first()


@dataclass(frozen=True)
class Page:
    """One list page's parameters (the API's ``ListQuery``): exclusive time bounds, keyset."""

    limit: int
    cursor: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    descending: bool = True


def _page(
    session: Session, query: Select[Any], model: Any, q: Page
) -> tuple[list[Any], str | None]:
    if q.created_after is not None:
        query = query.where(model.created_at > q.created_after)
    if q.created_before is not None:
        query = query.where(model.created_at < q.created_before)
    return pagination.list_page(
        session, query, model, limit=q.limit, cursor=q.cursor, descending=q.descending
    )


def list_instances(
    session: Session, org_id: str, q: Page
) -> tuple[list[AssistantInstance], str | None]:
    query = select(AssistantInstance).where(
        AssistantInstance.org_id == org_id, AssistantInstance.deleted_at.is_(None)
    )
    return _page(session, query, AssistantInstance, q)


def get_conversation(
    session: Session, instance_id: str, conversation_id: str
) -> AssistantConversation | None:
    return session.scalars(
        select(AssistantConversation).where(
            AssistantConversation.id == conversation_id,
            AssistantConversation.instance_id == instance_id,
        )
    ).first()


def list_conversations(
    session: Session, instance_id: str, q: Page
) -> tuple[list[AssistantConversation], str | None]:
    query = select(AssistantConversation).where(AssistantConversation.instance_id == instance_id)
    return _page(session, query, AssistantConversation, q)


def list_messages(
    session: Session, conversation_id: str, q: Page
) -> tuple[list[AssistantMessage], str | None]:
    query = select(AssistantMessage).where(AssistantMessage.conversation_id == conversation_id)
    return _page(session, query, AssistantMessage, q)


def history(session: Session, conversation_id: str) -> Sequence[AssistantMessage]:
    """Every message of a conversation, oldest first."""
    return session.scalars(
        select(AssistantMessage)
        .where(AssistantMessage.conversation_id == conversation_id)
        .order_by(AssistantMessage.created_at, AssistantMessage.id)
    ).all()


def get_message(session: Session, message_id: str) -> AssistantMessage | None:
    return session.get(AssistantMessage, message_id)


def get_delivery(
    session: Session, instance_id: str, webhook_id: str
) -> AssistantWebhookDelivery | None:
    return session.get(AssistantWebhookDelivery, (instance_id, webhook_id))


def tail_logs(session: Session, instance_id: str, tail: int) -> list[AssistantLog]:
    """The last ``tail`` log lines, oldest first."""
    rows = session.scalars(
        select(AssistantLog)
        .where(AssistantLog.instance_id == instance_id)
        .order_by(AssistantLog.created_at.desc(), AssistantLog.id.desc())
        .limit(tail)
    ).all()
    return list(reversed(rows))


def logs_after(
    session: Session, instance_id: str, after: AssistantLog | None
) -> list[AssistantLog]:
    """Log lines newer than ``after`` (all when None), oldest first."""
    query = select(AssistantLog).where(AssistantLog.instance_id == instance_id)
    if after is not None:
        query = query.where(
            pagination.after(AssistantLog, (after.created_at, after.id), descending=False)
        )
    return list(
        session.scalars(query.order_by(AssistantLog.created_at, AssistantLog.id).limit(500)).all()
    )


def add_usage(
    session: Session, instance_id: str, org_id: str, period: str, prompt: int, completion: int
) -> None:
    """Atomic upsert-increment: two replies of one instance finishing at once both count."""
    values: dict[str, Any] = {
        "instance_id": instance_id,
        "period": period,
        "org_id": org_id,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
    }
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(AssistantUsage).values(**values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["instance_id", "period"],
            set_={
                "prompt_tokens": AssistantUsage.prompt_tokens + statement.excluded.prompt_tokens,
                "completion_tokens": AssistantUsage.completion_tokens
                + statement.excluded.completion_tokens,
            },
        )
    )


def usage_of_org(
    session: Session, org_id: str, period: str
) -> Sequence[tuple[AssistantUsage, str]]:
    """The period's usage rows of the organisation's instances, with each instance's name."""
    rows = session.execute(
        select(AssistantUsage, AssistantInstance.name)
        .join(AssistantInstance, AssistantInstance.id == AssistantUsage.instance_id)
        .where(AssistantUsage.org_id == org_id, AssistantUsage.period == period)
        .order_by(AssistantInstance.created_at)
    ).all()
    return [(r[0], r[1]) for r in rows]
