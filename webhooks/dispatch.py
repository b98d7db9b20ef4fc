"""Emit webhook events: record deliveries in their own transaction, then enqueue them.

:func:`emit_event` is the one function other domains call (deployments: ``deployment.*``);
job lifecycle events reach it through ``common.events`` (see ``tasks/webhooks.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from config.queues import WEBHOOKS
from store.db import session_scope
from webhooks import service
from webhooks.schemas import EVENT_TYPES

log = logging.getLogger(__name__)

DELIVER_TASK = "webhooks.deliver"


def enqueue_deliveries(delivery_ids: list[str]) -> None:
    """Send one ``webhooks.deliver`` message per delivery (call after the commit)."""
    if not delivery_ids:
        return
    from workers.app import celery_app

    for delivery_id in delivery_ids:
        celery_app.send_task(DELIVER_TASK, args=[delivery_id], queue=WEBHOOKS)


def emit_event(
    event_type: str,
    *,
    org_id: str,
    data: Mapping[str, Any],
    job_id: str | None = None,
) -> list[str]:
    """Deliver ``event_type`` with ``data`` to every subscribed webhook of ``org_id``.

    Call after the commit that made the event true. Returns the new delivery ids. Unknown event
    types are a programming error (ValueError); a broker failure is logged, not raised: the
    deliveries stay ``pending`` in the log and can be redelivered.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    with session_scope() as session:
        ids = service.record_event(
            session, org_id=org_id, event_type=event_type, data=data, job_id=job_id
        )
    try:
        enqueue_deliveries(ids)
    except Exception:
        log.exception("could not enqueue %d webhook deliveries for %s", len(ids), event_type)
    return ids
