"""The ``webhooks`` queue: ``webhooks.deliver`` attempts one webhook message and schedules the
retry the policy asks for (``webhooks.jobs.attempt_delivery``); this module also owns the
process's HTTP client for deliveries.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
from celery import Task
from celery.signals import worker_process_shutdown

from crawler.config import CrawlConfig
from crawler.safety import AllowList
from webhooks.events import DELIVER_TASK
from webhooks.jobs import attempt_delivery
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
    attempted = attempt_delivery(delivery_id, http_client())
    if attempted.retry_in is not None:
        raise self.retry(countdown=attempted.retry_in, max_retries=None)
    return attempted.status
