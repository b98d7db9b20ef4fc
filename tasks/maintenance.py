"""Beat tasks on the ``maintenance`` queue: result expiry, metadata purge, the job sweeps (leases,
queued jobs without a message, time limits), the broker canary that notices a queue nobody
consumes, and the idempotency-key and webhook-delivery housekeeping."""

from __future__ import annotations

import logging
import time
from typing import Any

from common import redis_clients
from common.timeutil import utcnow
from config import get_settings
from config.queues import QUEUES
from jobs import jobs as job_sweeps
from store import jobs as job_store
from store.db import session_scope
from webhooks import jobs as webhook_jobs
from workers import outbox
from workers.app import celery_app

log = logging.getLogger(__name__)

CANARY_KEY = "conveyor:canary:{queue}"
CANARY_SENT_KEY = "conveyor:canary-sent:{queue}"


@celery_app.task(name="maintenance.expire_results")
def expire_results() -> int:
    """Delete results whose 24 h have passed (the result endpoint then answers 410)."""
    total = 0
    while True:
        with session_scope() as session:
            count = job_store.expire_results(session, utcnow())
        total += count
        if count == 0:
            return total


@celery_app.task(name="maintenance.purge_metadata")
def purge_metadata() -> int:
    """Delete job metadata 30 days after the job ended."""
    total = 0
    while True:
        with session_scope() as session:
            count = job_store.purge_metadata(session, utcnow())
        total += count
        if count == 0:
            return total


@celery_app.task(name="maintenance.sweep_jobs")
def sweep_jobs() -> dict[str, Any]:
    """No job lost or stuck: re-queue jobs whose worker's lease lapsed, re-send queued jobs whose
    message the broker lacks, fail jobs past their time limit (``jobs.jobs.sweep``)."""
    return job_sweeps.sweep()


@celery_app.task(name="maintenance.reap_stuck_jobs")
def reap_stuck_jobs() -> list[str]:
    """Fail jobs still ``running`` past their kind's hard time limit (``timed_out``)."""
    return job_sweeps.reap_timed_out()


@celery_app.task(name="maintenance.purge_idempotency_keys", acks_late=True)
def purge_idempotency_keys() -> int:
    """Forget idempotency keys older than their TTL (24 h)."""
    from idempotency.service import purge_expired

    return purge_expired(get_settings().idempotency_ttl_seconds)


@celery_app.task(name="maintenance.purge_webhook_deliveries", acks_late=True)
def purge_webhook_deliveries() -> int:
    """Delete webhook delivery log entries older than the job metadata TTL (30 days)."""
    return webhook_jobs.purge_old_deliveries()


@celery_app.task(name="maintenance.requeue_stale_webhook_deliveries", acks_late=True)
def requeue_stale_webhook_deliveries() -> int:
    """Re-send pending webhook deliveries whose message was lost."""
    return webhook_jobs.requeue_stale_deliveries()


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


@celery_app.task(name="maintenance.canary_ping", ignore_result=True)
def canary_ping(queue: str, sent_at: float) -> None:
    """Runs on each queue: proves a worker consumed from it."""
    redis_clients.client().set(CANARY_KEY.format(queue=queue), f"{time.time()}:{sent_at}")


@celery_app.task(name="maintenance.broker_canary")
def broker_canary() -> dict[str, float | None]:
    """Send a canary to every queue; report (and log) queues whose last canary is stale."""
    settings = get_settings()
    client = redis_clients.client()
    now = time.time()
    ages: dict[str, float | None] = {}
    for queue in QUEUES:
        raw = _text(client.get(CANARY_KEY.format(queue=queue)))
        sent = _text(client.get(CANARY_SENT_KEY.format(queue=queue)))
        consumed_at = float(raw.split(":")[0]) if raw else None
        ages[queue] = None if consumed_at is None else round(now - consumed_at, 1)
        if (
            sent
            and float(sent) < now - settings.canary_max_age_seconds
            and (consumed_at is None or consumed_at < float(sent))
        ):
            log.error(
                "queue %s: no worker consumed the canary sent %.0f s ago",
                queue,
                now - float(sent),
            )
        if not sent or consumed_at is None or consumed_at >= float(sent):
            client.set(CANARY_SENT_KEY.format(queue=queue), str(now))
            ping = outbox.Message(
                "maintenance.canary_ping",
                (queue, now),
                queue,
                expires=settings.canary_max_age_seconds,
            )
            outbox.send([ping])
    return ages


def queue_health() -> dict[str, dict[str, float | int | None]]:
    """Queue depths and canary ages, for ``GET /v1/health``."""
    client = redis_clients.client()
    now = time.time()
    report: dict[str, dict[str, float | int | None]] = {}
    for queue in QUEUES:
        raw = _text(client.get(CANARY_KEY.format(queue=queue)))
        age = round(now - float(raw.split(":")[0]), 1) if raw else None
        report[queue] = {"depth": int(client.llen(queue)), "canary_age_s": age}
    return report
