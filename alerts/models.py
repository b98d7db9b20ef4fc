"""Tables of the alerts domain: the alert rule with its evaluation state, and its events (one row
per notified transition)."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from common.timeutil import utcnow
from store.models import Base, JSONType


def new_alert_id() -> str:
    return f"alrt_{secrets.token_hex(8)}"


def new_alert_event_id() -> str:
    return f"alev_{secrets.token_hex(8)}"


class Alert(Base):
    """One alert rule and where its evaluation stands.

    ``state``: ``ok`` → ``pending`` (the condition holds, not yet for ``for_seconds``) →
    ``firing`` → ``resolved`` (clear for ``for_seconds``), then ``pending`` again when it holds.
    ``version`` is bumped by every state write; writes are compare-and-set on it, so of two
    evaluations racing, one wins and the other changes nothing.
    """

    __tablename__ = "alerts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_alert_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    condition_type: Mapped[str] = mapped_column(String(40))
    condition: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    channels: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(20), default="ok")
    version: Mapped[int] = mapped_column(Integer, default=0)
    pending_since: Mapped[datetime | None] = mapped_column(default=None)
    clear_since: Mapped[datetime | None] = mapped_column(default=None)
    last_value: Mapped[float | None] = mapped_column(Float, default=None)
    last_evaluated_at: Mapped[datetime | None] = mapped_column(default=None)
    last_transition_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_alerts_org_created", "org_id", "created_at", "id"),
        Index("ix_alerts_org_type_enabled", "org_id", "condition_type", "enabled"),
        Index("ix_alerts_enabled_id", "enabled", "id"),
    )


class AlertEvent(Base):
    """A notified transition (``firing`` or ``resolved``). Unique on ``(alert_id, version)``:
    one transition of the rule is recorded, and notified, at most once."""

    __tablename__ = "alert_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_alert_event_id)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    value: Mapped[float | None] = mapped_column(Float, default=None)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    emailed_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ux_alert_events_alert_version", "alert_id", "version", unique=True),
        Index("ix_alert_events_alert_created", "alert_id", "created_at", "id"),
    )
