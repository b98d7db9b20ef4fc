"""The one function that emits ``resource.*`` events and alerts (logs and webhooks).

Alerts (``resource.degraded``, ``resource.backup_failed``) are always logged at WARNING, so
an archive or verification failure is never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from webhooks.schemas import RESOURCE_EVENTS

log = logging.getLogger(__name__)

EVENTS = RESOURCE_EVENTS
ALERTS = ("resource.degraded", "resource.failed", "resource.backup_failed")


def emit(event_type: str, *, org_id: str, data: Mapping[str, Any]) -> None:
    """Send a resource event to the organisation's webhooks. Call after the commit."""
    level = logging.WARNING if event_type in ALERTS else logging.INFO
    log.log(level, "resource event %s for %s: %s", event_type, data.get("id"), data.get("reason"))
    from webhooks.dispatch import emit_event

    try:
        emit_event(event_type, org_id=org_id, data=dict(data))
    except Exception:
        log.exception("could not record webhook event %s", event_type)
