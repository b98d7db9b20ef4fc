"""The worker-side work of webhooks: one delivery attempt under the retry policy (attempt,
record, decide the backoff), and the delivery log's housekeeping (re-send lost messages, purge
old entries).

Deliveries are recorded by ``webhooks.events.emit`` in the transaction that made the event true
and sent by the outbox once it commits; ``tasks/webhooks.py`` declares the ``webhooks.deliver``
task that calls :func:`attempt_delivery` and schedules the retry it asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import httpx

from common.timeutil import utcnow
from config import get_settings
from store.db import session_scope
from webhooks import events, service
from webhooks.delivery import deliver, encode_payload, retry_delay
from webhooks.models import WebhookDelivery


@dataclass(frozen=True)
class Attempted:
    """What one attempt left: the delivery's status, and ``retry_in`` seconds when the policy
    asks for another attempt (None: it stopped, delivered or given up)."""

    status: str
    retry_in: float | None = None


def attempt_delivery(delivery_id: str, client: httpx.Client) -> Attempted:
    """Attempt delivery ``delivery_id`` once with ``client`` and record the attempt; a retryable
    failure below ``webhook_max_attempts`` asks for a retry after the backoff delay."""
    settings = get_settings()
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status != "pending":
            return Attempted("skipped")
        target = service.delivery_target(session, delivery)
        if target is None:
            delivery.status = "failed"
            delivery.last_error = "webhook_deleted"
            return Attempted("failed")
        url, secret = target
        payload = delivery.payload
        msg_id = delivery.msg_id
        attempt = delivery.attempts + 1
    body = encode_payload(payload["type"], payload["timestamp"], payload["data"])
    outcome = deliver(
        client,
        url,
        secret,
        msg_id,
        body,
        url_guard=service.guard_url,
        timeout=settings.webhook_timeout_seconds,
    )
    retry = not outcome.ok and outcome.retryable and attempt < settings.webhook_max_attempts
    delay = (
        retry_delay(
            attempt,
            base=settings.webhook_backoff_base_seconds,
            factor=settings.webhook_backoff_factor,
        )
        if retry
        else None
    )
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None:
            return Attempted("skipped")
        next_at = utcnow() + timedelta(seconds=delay) if delay is not None else None
        service.record_attempt(delivery, outcome, next_attempt_at=next_at)
        return Attempted(delivery.status, delay)


def purge_old_deliveries() -> int:
    """Delete delivery log entries older than the job metadata TTL (30 days)."""
    settings = get_settings()
    with session_scope() as session:
        return service.purge_deliveries(
            session, utcnow() - timedelta(days=settings.metadata_ttl_days)
        )


def requeue_stale_deliveries() -> int:
    """Re-send pending deliveries whose message was lost. "Stale" is well past the longest
    backoff delay, so a retry still waiting in the broker is not doubled."""
    settings = get_settings()
    longest = retry_delay(
        max(1, settings.webhook_max_attempts - 1),
        base=settings.webhook_backoff_base_seconds,
        factor=settings.webhook_backoff_factor,
        jitter=0.0,
    )
    cutoff = utcnow() - timedelta(seconds=longest * 1.2 + 900)
    with session_scope() as session:
        ids = service.stale_pending_deliveries(session, cutoff)
        for delivery_id in ids:
            events.deliver(session, delivery_id)
    return len(ids)
