"""Alert tasks on the ``maintenance`` queue: the beat's evaluation of every rule, an
organisation's evaluation on an event, and alert e-mail (``alerts/jobs.py`` does the work)."""

from __future__ import annotations

import smtplib
from typing import Any

from alerts import jobs
from workers.app import celery_app


@celery_app.task(name="alerts.evaluate", acks_late=True)
def evaluate() -> dict[str, int]:
    """Evaluate every enabled alert rule (beat, every ``CONVEYOR_ALERTS_EVALUATE_SECONDS``)."""
    return jobs.evaluate_all()


@celery_app.task(name="alerts.evaluate_org", acks_late=True)
def evaluate_org(org_id: str, types: list[str]) -> dict[str, int]:
    """Evaluate one organisation's rules of these condition types (sent by an event)."""
    return jobs.evaluate_org(org_id, types)


@celery_app.task(
    name="alerts.send_email",
    bind=True,
    acks_late=True,
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=8,
)
def send_email(self: Any, event_id: str) -> bool:
    """E-mail one alert event to its rule's ``email`` channels (retried while SMTP fails)."""
    return jobs.send_email(event_id)
