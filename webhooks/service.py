"""Webhook rules: endpoints, per-job webhooks, turning events into deliveries, the delivery log.

Functions take the caller's session and never commit. Enqueueing deliveries after the commit is
the caller's job (``webhooks.events.emit`` does both, on the caller's session).
Target URLs go through the platform's SSRF guard (``common.urlsafety.check_url``, governed by
``CONVEYOR_CRAWL_ALLOWED_HOSTS``) when they are registered and again before every attempt.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from common.errors import NotFound, ValidationFailed
from common.timeutil import isoformat_z, utcnow
from common.urlsafety import check_url
from config import get_settings
from store import pagination
from webhooks import repository, secretbox
from webhooks.delivery import DeliveryOutcome
from webhooks.models import JobWebhook, WebhookDelivery, WebhookEndpoint
from webhooks.schemas import DeliveryOut, JobWebhookSpec, WebhookCreate, WebhookOut
from webhooks.signing import generate_secret


def guard_url(url: str) -> None:
    """Raise 422 ``unsafe_url`` unless ``url`` may receive webhooks (SSRF allow-list aware)."""
    check_url(url, get_settings().crawl_allowed_hosts)


# --- organisation endpoints -------------------------------------------------------------------


def create_endpoint(
    session: Session, org_id: str, body: WebhookCreate
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint; returns it and its secret (shown to the caller once)."""
    guard_url(body.url)
    secret = body.secret or generate_secret()
    endpoint = WebhookEndpoint(
        org_id=org_id,
        url=body.url,
        events=sorted(set(body.events)),
        description=body.description,
        secret_encrypted=secretbox.encrypt(secret),
    )
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def get_endpoint(session: Session, org_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = repository.get_endpoint(session, org_id, endpoint_id)
    if endpoint is None:
        raise NotFound("Webhook not found.")
    return endpoint


def delete_endpoint(session: Session, org_id: str, endpoint_id: str) -> None:
    session.delete(get_endpoint(session, org_id, endpoint_id))
    session.flush()


def list_endpoints(
    session: Session, org_id: str, limit: int, cursor: str | None
) -> tuple[Sequence[WebhookEndpoint], str | None]:
    query = repository.endpoints_query(org_id)
    return pagination.list_page(session, query, WebhookEndpoint, limit=limit, cursor=cursor)


def list_deliveries(
    session: Session, org_id: str, endpoint_id: str, limit: int, cursor: str | None
) -> tuple[Sequence[WebhookDelivery], str | None]:
    get_endpoint(session, org_id, endpoint_id)
    query = repository.deliveries_query(org_id, endpoint_id)
    return pagination.list_page(session, query, WebhookDelivery, limit=limit, cursor=cursor)


def redeliver(session: Session, org_id: str, endpoint_id: str, delivery_id: str) -> WebhookDelivery:
    """A new delivery of the same message (same ``webhook-id`` and payload) to the endpoint."""
    get_endpoint(session, org_id, endpoint_id)
    original = repository.get_delivery(session, org_id, delivery_id)
    if original is None or original.endpoint_id != endpoint_id:
        raise NotFound("Delivery not found.")
    again = WebhookDelivery(
        org_id=org_id,
        endpoint_id=endpoint_id,
        job_id=original.job_id,
        msg_id=original.msg_id,
        event_type=original.event_type,
        payload=original.payload,
    )
    session.add(again)
    session.flush()
    return again


# --- per-job webhooks -------------------------------------------------------------------------


def parse_job_webhook(value: Any) -> JobWebhookSpec:
    """Validate a create body's ``"webhook"`` value (422 with field-level details)."""
    try:
        return JobWebhookSpec.model_validate(value)
    except ValidationError as exc:
        details = [
            {"loc": ["body", "webhook", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        raise ValidationFailed("The webhook is invalid.", details=details) from None


def attach_job_webhook(
    session: Session, org_id: str, job_id: str, spec: JobWebhookSpec
) -> dict[str, Any]:
    """Store a job's webhook (secret encrypted); returns its public view ``{url, events}``."""
    guard_url(spec.url)
    secret = spec.secret or generate_secret()
    events = sorted(set(spec.events))
    session.add(
        JobWebhook(
            job_id=job_id,
            org_id=org_id,
            url=spec.url,
            events=events,
            secret_encrypted=secretbox.encrypt(secret),
        )
    )
    session.flush()
    return {"url": spec.url, "events": events}


def job_webhook_view(
    session: Session, job_id: str, *, with_secret: bool = False
) -> dict[str, Any] | None:
    """``{url, events}`` of a job's webhook (plus ``secret`` for the create response only)."""
    hook = repository.get_job_webhook(session, job_id)
    if hook is None:
        return None
    view: dict[str, Any] = {"url": hook.url, "events": list(hook.events)}
    if with_secret:
        view["secret"] = secretbox.decrypt(hook.secret_encrypted)
    return view


# --- events → deliveries ----------------------------------------------------------------------


def new_msg_id() -> str:
    return "msg_" + uuid.uuid4().hex


def record_event(
    session: Session,
    *,
    org_id: str,
    event_type: str,
    data: Mapping[str, Any],
    job_id: str | None = None,
    at: datetime | None = None,
) -> list[str]:
    """Create one pending delivery per subscribed target; returns their ids (enqueue them)."""
    payload = {"type": event_type, "timestamp": isoformat_z(at or utcnow()), "data": dict(data)}
    msg_id = new_msg_id()
    deliveries: list[WebhookDelivery] = []
    for endpoint in repository.endpoints_for_org(session, org_id):
        if event_type in endpoint.events:
            deliveries.append(
                WebhookDelivery(
                    org_id=org_id,
                    endpoint_id=endpoint.id,
                    job_id=job_id,
                    msg_id=msg_id,
                    event_type=event_type,
                    payload=payload,
                )
            )
    hook = repository.get_job_webhook(session, job_id) if job_id else None
    if hook is not None and event_type in hook.events:
        deliveries.append(
            WebhookDelivery(
                org_id=org_id,
                job_id=job_id,
                msg_id=msg_id,
                event_type=event_type,
                payload=payload,
            )
        )
    session.add_all(deliveries)
    session.flush()
    return [d.id for d in deliveries]


def delivery_target(session: Session, delivery: WebhookDelivery) -> tuple[str, str] | None:
    """The (url, secret) a delivery goes to, or None when its target was deleted."""
    if delivery.endpoint_id is not None:
        endpoint = repository.get_endpoint(session, delivery.org_id, delivery.endpoint_id)
        if endpoint is None:
            return None
        return endpoint.url, secretbox.decrypt(endpoint.secret_encrypted)
    hook = repository.get_job_webhook(session, delivery.job_id) if delivery.job_id else None
    if hook is None:
        return None
    return hook.url, secretbox.decrypt(hook.secret_encrypted)


def record_attempt(
    delivery: WebhookDelivery,
    outcome: DeliveryOutcome,
    *,
    next_attempt_at: datetime | None,
) -> None:
    """Write one attempt's outcome; ``next_attempt_at`` None means no further automatic retry."""
    now = utcnow()
    delivery.attempts += 1
    delivery.last_status_code = outcome.status_code
    delivery.last_error = outcome.error[:500] if outcome.error else None
    delivery.response_snippet = outcome.response_snippet or None
    delivery.duration_ms = outcome.duration_ms
    delivery.updated_at = now
    delivery.next_attempt_at = None if outcome.ok else next_attempt_at
    if outcome.ok:
        delivery.status = "succeeded"
        delivery.delivered_at = now
    elif next_attempt_at is None:
        delivery.status = "failed"
    else:
        delivery.status = "pending"


def stale_pending_deliveries(session: Session, before: datetime, limit: int = 500) -> list[str]:
    """Pending deliveries untouched since ``before`` (their message was lost: a broker outage
    at enqueue time, a worker killed mid-attempt); marks them touched and returns their ids."""
    rows = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.updated_at < before)
        .order_by(WebhookDelivery.updated_at)
        .limit(limit)
    ).all()
    now = utcnow()
    for row in rows:
        row.updated_at = now
    return [row.id for row in rows]


def purge_deliveries(session: Session, before: datetime) -> int:
    """Delete finished deliveries created before ``before``; returns how many."""
    result = session.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.created_at < before, WebhookDelivery.status != "pending"
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


# --- views ------------------------------------------------------------------------------------


def endpoint_view(endpoint: WebhookEndpoint, secret: str | None = None) -> WebhookOut:
    return WebhookOut(
        id=endpoint.id,
        url=endpoint.url,
        events=list(endpoint.events),
        description=endpoint.description,
        created_at=endpoint.created_at,
        secret=secret,
    )


def delivery_view(delivery: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id,
        webhook_id=delivery.endpoint_id,
        job_id=delivery.job_id,
        msg_id=delivery.msg_id,
        event_type=delivery.event_type,
        status=delivery.status,  # type: ignore[arg-type]
        attempts=delivery.attempts,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        response_snippet=delivery.response_snippet,
        duration_ms=delivery.duration_ms,
        next_attempt_at=delivery.next_attempt_at,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
    )
