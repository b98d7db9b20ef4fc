"""Where the ``usage`` and ``budget`` conditions read the period's usage, cost and credits.

One small seam so the billing domain can be wired in one place: until ``billing/`` is merged,
quantities come from the plans' usage counters (``plans.service``) and a budget cannot be
measured (``ConditionUnavailable``: the rule stays as it is and the evaluation logs why).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from alerts.errors import ConditionUnavailable
from plans import repository as plans_repository
from plans import service as plans_service


def period_quantity(session: Session, org_id: str, meter: str, now: datetime) -> float:
    """The quantity of ``meter`` used by ``org_id`` in the billing period containing ``now``."""
    if meter == "pages_crawled":
        return float(plans_service.pages_used(session, org_id, now))
    key = plans_service.period_key(now)
    return float(plans_repository.get_counter(session, org_id, key, meter))


def period_cost_micros(session: Session, org_id: str, now: datetime) -> int:
    """The cost (micro-units) of what ``org_id`` used in the period containing ``now``."""
    raise ConditionUnavailable("Budget alerts need the billing domain (prices), not installed.")


def credits_balance_micros(session: Session, org_id: str) -> int:
    raise ConditionUnavailable("Budget alerts need the billing domain (credits), not installed.")
