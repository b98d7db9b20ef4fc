"""Tables of the assistants domain: instances, conversations, messages, incoming-webhook
deliveries (idempotency), logs and per-instance token usage."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from common.timeutil import utcnow
from store.models import Base, JSONType


def new_instance_id() -> str:
    return f"ins_{secrets.token_hex(8)}"


def new_conversation_id() -> str:
    return f"conv_{secrets.token_hex(8)}"


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(8)}"


def new_log_id() -> str:
    return f"alog_{secrets.token_hex(8)}"


class AssistantInstance(Base):
    """A hosted chat instance: a model, its prompt and sampling, its plan and its webhook secret.

    ``backend`` is ``inference`` (a model of the inference workers) or ``deployment`` (a model
    deployment of the organisation, by name). ``webhook_secret_encrypted`` is the incoming-webhook
    secret, Fernet-encrypted (``webhooks.secretbox``); it is shown once, at creation or rotation.
    """

    __tablename__ = "assistant_instances"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_instance_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(200))
    backend: Mapped[str] = mapped_column(String(20))
    plan: Mapped[str] = mapped_column(String(20))
    system_prompt: Mapped[str | None] = mapped_column(Text, default=None)
    temperature: Mapped[float | None] = mapped_column(Float, default=None)
    max_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    tools: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    message_template: Mapped[str] = mapped_column(Text)
    log_content: Mapped[bool] = mapped_column(Boolean, default=False)
    webhook_secret_encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (Index("ix_assistant_instances_org_created", "org_id", "created_at", "id"),)


class AssistantConversation(Base):
    __tablename__ = "assistant_conversations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_conversation_id)
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("assistant_instances.id", ondelete="CASCADE")
    )
    org_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_assistant_conversations_instance_created", "instance_id", "created_at", "id"),
    )


class AssistantMessage(Base):
    """One turn of a conversation. An assistant reply's id is chosen when its job is created,
    so the worker's write is idempotent and the API knows which row holds the answer."""

    __tablename__ = "assistant_messages"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_message_id)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("assistant_conversations.id", ondelete="CASCADE")
    )
    instance_id: Mapped[str] = mapped_column(String(40))
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    dropped_turns: Mapped[int] = mapped_column(Integer, default=0)
    tool_calls: Mapped[list[Any] | None] = mapped_column(JSONType, default=None)  # OpenAI's
    tool_call_id: Mapped[str | None] = mapped_column(String(64), default=None)  # role "tool"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_assistant_messages_conversation_created", "conversation_id", "created_at", "id"),
    )


class AssistantWebhookDelivery(Base):
    """An incoming webhook already accepted: its ``webhook-id`` answers a replay with the same
    job instead of a second run."""

    __tablename__ = "assistant_webhook_deliveries"

    instance_id: Mapped[str] = mapped_column(
        ForeignKey("assistant_instances.id", ondelete="CASCADE"), primary_key=True
    )
    webhook_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AssistantLog(Base):
    """One log line of an instance: a chat, a webhook delivery or an error."""

    __tablename__ = "assistant_logs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_log_id)
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("assistant_instances.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_assistant_logs_instance_created", "instance_id", "created_at", "id"),
    )


class AssistantUsage(Base):
    """Tokens an instance used in a calendar month (``plans.service.period_key``)."""

    __tablename__ = "assistant_usage"

    instance_id: Mapped[str] = mapped_column(
        ForeignKey("assistant_instances.id", ondelete="CASCADE"), primary_key=True
    )
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(36))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (Index("ix_assistant_usage_org_period", "org_id", "period"),)
