"""Queries of the webhooks domain. Functions take the caller's session and never commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, or_, select
from sqlalchemy.orm import Session

from store.models import Job
from webhooks.models import JobWebhook, WebhookDelivery, WebhookEndpoint


def get_endpoint(session: Session, org_id: str, endpoint_id: str) -> WebhookEndpoint | None:
    return session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.org_id == org_id
        )
    )


def endpoints_query(org_id: str) -> Select[WebhookEndpoint]:
    """An organisation's endpoints (listed newest first by ``store.pagination``)."""
    return select(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id)


def endpoints_for_org(session: Session, org_id: str) -> Sequence[WebhookEndpoint]:
    return session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id)).all()


def listeners(org_id: Any, job_id: Any) -> ColumnElement[bool]:
    """SQL: does anything listen to this org's or this job's events? ``org_id``/``job_id`` may
    be values or columns, so the check can ride inside another statement (a job's start)."""
    endpoint = exists(select(WebhookEndpoint.id).where(WebhookEndpoint.org_id == org_id))
    hook = exists(select(JobWebhook.job_id).where(JobWebhook.job_id == job_id))
    return or_(endpoint, hook)


#: For a statement over the ``jobs`` row: does a webhook listen to this job's events?
LISTENING_TO_JOB: ColumnElement[bool] = listeners(Job.org_id, Job.id)


def has_targets(session: Session, org_id: str, job_id: str | None) -> bool:
    """Whether anything listens to this org's (or this job's) events: one indexed query, so
    the common case of no webhooks costs a job's events almost nothing."""
    if job_id is None:
        endpoint = exists(select(WebhookEndpoint.id).where(WebhookEndpoint.org_id == org_id))
        return bool(session.scalar(select(endpoint)))
    return bool(session.scalar(select(listeners(org_id, job_id))))


def get_job_webhook(session: Session, job_id: str) -> JobWebhook | None:
    return session.get(JobWebhook, job_id)


def get_delivery(session: Session, org_id: str, delivery_id: str) -> WebhookDelivery | None:
    return session.scalar(
        select(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.org_id == org_id
        )
    )


def deliveries_query(org_id: str, endpoint_id: str) -> Select[WebhookDelivery]:
    """An endpoint's delivery log (listed newest first by ``store.pagination``)."""
    return select(WebhookDelivery).where(
        WebhookDelivery.org_id == org_id, WebhookDelivery.endpoint_id == endpoint_id
    )
