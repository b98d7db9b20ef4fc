"""Billing's beat tasks (maintenance queue): closing months into invoices, and metering durable
usage + stopping the work of organisations out of credit (``billing.jobs``)."""

from __future__ import annotations

from typing import Any

from billing import jobs as billing_jobs
from workers.app import celery_app


@celery_app.task(name="billing.close_periods")
def close_periods(period: str | None = None, org: str | None = None) -> list[str]:
    """Invoices of the month that ended (idempotent: a rerun makes none)."""
    return billing_jobs.close_periods(period, org)


@celery_app.task(name="billing.meter_and_enforce")
def meter_and_enforce() -> dict[str, Any]:
    """Storage GB-hours and other durable usage; stop deployments out of credit past grace."""
    return billing_jobs.meter_and_enforce()
