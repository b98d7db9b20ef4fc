"""Where the ``usage`` and ``budget`` conditions read the period's usage, cost and credits: the
billing domain (``billing.service.period_totals`` / ``credits_balance``) where it is installed.

The one seam between alerts and billing, looked up by name (no import edge, like
``config.queues``' declarations), so either package can be deployed without the other: without
``billing/``, quantities come from the plans' usage counters (``plans.service``) and a budget
cannot be measured (``ConditionUnavailable``: the rule keeps its state; the run logs why).
"""

from __future__ import annotations

import importlib
from datetime import datetime
from types import ModuleType

from sqlalchemy.orm import Session

from alerts.errors import ConditionUnavailable
from plans import repository as plans_repository
from plans import service as plans_service

BILLING_SERVICE = "billing.service"


def billing() -> ModuleType | None:
    """``billing.service`` when the billing domain is installed, else None."""
    try:
        return importlib.import_module(BILLING_SERVICE)
    except ModuleNotFoundError as exc:
        if exc.name in ("billing", BILLING_SERVICE):
            return None
        raise


def period_quantity(session: Session, org_id: str, meter: str, now: datetime) -> float:
    """The quantity of ``meter`` used by ``org_id`` in the billing period containing ``now``."""
    key = plans_service.period_key(now)
    service = billing()
    if service is not None:
        totals = service.period_totals(session, org_id, key).get(meter)
        return float(totals.quantity) if totals is not None else 0.0
    if meter == "pages_crawled":
        return float(plans_service.pages_used(session, org_id, now))
    return float(plans_repository.get_counter(session, org_id, key, meter))


def period_cost_micros(session: Session, org_id: str, now: datetime) -> int:
    """The cost (micro-units) of what ``org_id`` used in the period containing ``now``."""
    service = _billing_or_unavailable()
    totals = service.period_totals(session, org_id, plans_service.period_key(now))
    return int(sum(t.cost_micros for t in totals.values()))


def credits_balance_micros(session: Session, org_id: str) -> int:
    """The organisation's credit balance (micro-units)."""
    return int(_billing_or_unavailable().credits_balance(session, org_id))


def _billing_or_unavailable() -> ModuleType:
    service = billing()
    if service is None:
        raise ConditionUnavailable("Budget alerts need the billing domain (prices, credits).")
    return service
