"""The one way to emit an event (``job.*``, ``deployment.*``, ``resource.*``).

``emit(session, type, org_id, data)`` writes one pending delivery per subscribed target in the
caller's transaction and records their ``webhooks.deliver`` messages in the outbox, so they
are sent once that transaction commits and never if it rolls back. Every event is logged;
alerts (``*.degraded``, ``*.failed``, ``*.backup_failed``) at WARNING, so a failure is never
silent even without a webhook.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from config.queues import EVENT_HOOKS, WEBHOOKS, resolve
from webhooks import service
from webhooks.schemas import EVENT_TYPES, JOB_EVENTS
from workers import outbox

log = logging.getLogger(__name__)

DELIVER_TASK = "webhooks.deliver"
ALERTS = frozenset({"resource.degraded", "resource.failed", "resource.backup_failed"})


def emit(
    session: Session,
    event_type: str,
    org_id: str,
    data: Mapping[str, Any],
    *,
    job_id: str | None = None,
) -> list[str]:
    """Record ``event_type`` for every subscribed webhook of ``org_id``; returns delivery ids.

    An unknown event type is a programming error (ValueError).
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    level = logging.WARNING if event_type in ALERTS else logging.INFO
    log.log(level, "event %s for %s: %s", event_type, data.get("id"), data.get("reason") or "")
    if job_id is None or event_type not in JOB_EVENTS:
        # ``job.*`` events run the hooks in ``jobs.service.emit_job_event`` (with or without a
        # webhook listening); every other event here, even one tied to a job (a project deploy)
        run_hooks(session, event_type, org_id, data)
    ids = service.record_event(
        session, org_id=org_id, event_type=event_type, data=data, job_id=job_id
    )
    for delivery_id in ids:
        deliver(session, delivery_id)
    return ids


def deliver(session: Session, delivery_id: str, *, countdown: float | None = None) -> None:
    """Send delivery ``delivery_id`` to the ``webhooks`` queue once ``session`` commits."""
    outbox.enqueue_task(session, DELIVER_TASK, [delivery_id], queue=WEBHOOKS, countdown=countdown)


def run_hooks(session: Session, event_type: str, org_id: str, data: Mapping[str, Any]) -> None:
    """Call every ``config.queues.EVENT_HOOKS`` function in the event's transaction (whether or
    not a webhook listens): e.g. the alert rules the event can change are evaluated at once."""
    for path in EVENT_HOOKS:
        resolve(path)(session, event_type, org_id, data)
