"""The ``webhooks`` queue: deliver one webhook message, retrying with exponential backoff.

Deliveries are recorded by ``webhooks.events.emit`` in the transaction that made the event true
and sent by the outbox once it commits.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

import httpx
from celery import Task
from celery.signals import worker_process_shutdown

from common.timeutil import utcnow
from config import get_settings
from crawler.config import CrawlConfig
from crawler.safety import AllowList
from store.db import session_scope
from webhooks import events, service
from webhooks.delivery import deliver, encode_payload, retry_delay
from webhooks.events import DELIVER_TASK
from webhooks.models import WebhookDelivery
from webhooks.transport import GuardedSyncTransport
from workers.app import celery_app

log = logging.getLogger(__name__)

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def http_client() -> httpx.Client:
    """One HTTP client per worker process (created on first use, closed at shutdown); its
    transport re-checks every resolved address with the SSRF guard at connect time."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(
                transport=GuardedSyncTransport(
                    lambda: AllowList.parse(CrawlConfig.from_settings().allowed_hosts)
                ),
                follow_redirects=False,
            )
        return _client


@worker_process_shutdown.connect
def _close_client(**_: Any) -> None:
    global _client
    with _client_lock:
        if _client is not None:
            _client.close()
            _client = None


@celery_app.task(name=DELIVER_TASK, bind=True, acks_late=True, max_retries=None)
def deliver_webhook(self: Task, delivery_id: str) -> str:
    """Attempt one delivery; on a retryable failure schedule the next attempt (backoff)."""
    settings = get_settings()
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status != "pending":
            return "skipped"
        target = service.delivery_target(session, delivery)
        if target is None:
            delivery.status = "failed"
            delivery.last_error = "webhook_deleted"
            return "failed"
        url, secret = target
        payload = delivery.payload
        msg_id = delivery.msg_id
        attempt = delivery.attempts + 1
    body = encode_payload(payload["type"], payload["timestamp"], payload["data"])
    outcome = deliver(
        http_client(),
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
            return "skipped"
        next_at = utcnow() + timedelta(seconds=delay) if delay is not None else None
        service.record_attempt(delivery, outcome, next_attempt_at=next_at)
        status = delivery.status
    if delay is not None:
        raise self.retry(countdown=delay, max_retries=None)
    return status


# --- housekeeping (beat) ----------------------------------------------------------------------


@celery_app.task(name="maintenance.purge_idempotency_keys", acks_late=True)
def purge_idempotency_keys() -> int:
    """Forget idempotency keys older than their TTL (24 h)."""
    from idempotency.service import purge_expired

    return purge_expired(get_settings().idempotency_ttl_seconds)


@celery_app.task(name="maintenance.purge_webhook_deliveries", acks_late=True)
def purge_webhook_deliveries() -> int:
    """Delete delivery log entries older than the job metadata TTL (30 days)."""
    settings = get_settings()
    with session_scope() as session:
        return service.purge_deliveries(
            session, utcnow() - timedelta(days=settings.metadata_ttl_days)
        )


@celery_app.task(name="maintenance.requeue_stale_webhook_deliveries", acks_late=True)
def requeue_stale_webhook_deliveries() -> int:
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
