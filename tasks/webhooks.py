"""The ``webhooks`` queue: ``webhooks.deliver`` attempts one webhook message and schedules the
retry the policy asks for (``webhooks.jobs.attempt_delivery``) on the process's HTTP client
(``webhooks.client.HTTP_CLIENT``).
"""

from __future__ import annotations

import logging

import httpx
from celery import Task

from webhooks.client import HTTP_CLIENT
from webhooks.events import DELIVER_TASK
from webhooks.jobs import attempt_delivery
from workers.app import celery_app

log = logging.getLogger(__name__)


def http_client() -> httpx.Client:
    """This worker process's webhook HTTP client (``webhooks.client.HTTP_CLIENT``)."""
    return HTTP_CLIENT.get()


@celery_app.task(name=DELIVER_TASK, bind=True, acks_late=True, max_retries=None)
def deliver_webhook(self: Task, delivery_id: str) -> str:
    """Attempt one delivery; on a retryable failure schedule the next attempt (backoff)."""
    attempted = attempt_delivery(delivery_id, http_client())
    if attempted.retry_in is not None:
        raise self.retry(countdown=attempted.retry_in, max_retries=None)
    return attempted.status
