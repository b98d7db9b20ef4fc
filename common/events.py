"""In-process job event hooks: the job runner and the API publish lifecycle events here
(``job.started``, ``job.progress``, ``job.completed``, ``job.failed``, ``job.cancelled``) after
the commit that caused them; subscribers (outgoing webhooks) turn them into deliveries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Subscriber = Callable[[str, str, dict[str, Any]], None]
_subscribers: list[Subscriber] = []


def subscribe(fn: Subscriber) -> Subscriber:
    if fn not in _subscribers:
        _subscribers.append(fn)
    return fn


def publish(event_type: str, job_id: str, data: dict[str, Any] | None = None) -> None:
    """Tell every subscriber; a failing subscriber is logged and never breaks the caller."""
    for fn in list(_subscribers):
        try:
            fn(event_type, job_id, data or {})
        except Exception:
            log.exception("event subscriber %r failed for %s on job %s", fn, event_type, job_id)
