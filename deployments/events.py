"""The one function that emits `deployment.*` events (webhooks and logs)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

EVENTS = (
    "deployment.created",
    "deployment.running",
    "deployment.failed",
    "deployment.degraded",
    "deployment.stopped",
    "deployment.deleted",
)


def emit(event_type: str, *, org_id: str, data: Mapping[str, Any]) -> None:
    """Send a deployment event to the organisation's webhooks. Call after the commit.

    Delivery goes through `webhooks.dispatch.emit_event` (signed, retried on the `webhooks`
    queue). An event type the webhooks domain does not know yet is logged, never raised: a
    deployment's lifecycle must not fail because of its notifications.
    """
    log.info("deployment event %s for %s", event_type, data.get("id"))
    from webhooks.dispatch import emit_event
    from webhooks.schemas import EVENT_TYPES

    if event_type not in EVENT_TYPES:
        log.warning("webhook event type %s is not registered; not delivered", event_type)
        return
    try:
        emit_event(event_type, org_id=org_id, data=dict(data))
    except Exception:
        log.exception("could not record webhook event %s", event_type)
