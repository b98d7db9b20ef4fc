"""The billing domain's beat work (``billing.*`` tasks on the maintenance queue).

* :func:`close_periods` — invoices of the month that ended (and any earlier month named), one
  transaction per organisation; idempotent (``invoices.close_org_period``).
* :func:`meter_and_enforce` — usage read from durable state by the other domains' meters
  (``config.queues.BILLING_METERS``: e.g. resources' storage GB-hours, keyed by hour so a rerun
  writes nothing twice), then credit enforcement: a prepaid organisation out of allowance and
  credits is marked overdrawn; past ``CONVEYOR_BILLING_GRACE_SECONDS`` its running deployments
  are stopped (never deleted) by ``config.queues.BILLING_SUSPENDERS`` with a
  ``billing.deployments_stopped`` webhook. Credit granted again clears the mark.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from billing import invoices, repository, service
from billing.models import BillingAccount
from common.errors import NotFound
from common.timeutil import utcnow
from config import get_settings
from config.queues import BILLING_METERS, BILLING_SUSPENDERS, resolve
from plans.service import period_key
from store.db import session_scope
from store.orgs import find_org
from webhooks import events

log = logging.getLogger(__name__)


def close_periods(period: str | None = None, org: str | None = None) -> list[str]:
    """Close ``period`` (default: last month) for every organisation with usage in it (or only
    ``org``, a name or id); the ids of the invoices made by this call (empty on a rerun)."""
    period = period or service.previous_period(period_key())
    service.resolve_period(period)  # 422 on a malformed month
    with session_scope() as session:
        if org is not None:
            found = find_org(session, org)
            if found is None:
                raise NotFound(f"Organisation {org!r} not found.")
            org_ids = [found.id]
        else:
            org_ids = invoices.orgs_to_close(session, period)
    made: list[str] = []
    for org_id in org_ids:
        try:
            with session_scope() as session:
                invoice = invoices.close_org_period(session, org_id, period)
                if invoice is not None:
                    made.append(invoice.id)
        except Exception:  # one organisation's failure must not keep the others unbilled
            log.exception("closing %s for organisation %s failed", period, org_id)
    return made


def meter_and_enforce() -> dict[str, Any]:
    metered = 0
    for path in BILLING_METERS:
        try:
            metered += int(resolve(path)())
        except Exception:
            log.exception("billing meter %s failed", path)
    return {"metered": metered, **enforce_credit()}


def enforce_credit() -> dict[str, list[str]]:
    """Mark prepaid organisations that ran out; stop the running work of those past grace."""
    grace = timedelta(seconds=get_settings().billing_grace_seconds)
    now = utcnow()
    overdrawn: list[str] = []
    stopped: list[str] = []
    with session_scope() as session:
        candidates = set(repository.orgs_with_usage(session, period_key()))
        candidates |= set(session.scalars(select(BillingAccount.org_id)))
    for org_id in sorted(candidates):
        with session_scope() as session:
            _, tier = service.org_tier(session, org_id)
            out = tier.prepaid and service.credit_position(session, org_id).available_micros <= 0
            account = repository.get_account(session, org_id)
            if not out:
                if account is not None:
                    session.delete(account)
                continue
            if account is None:
                account = BillingAccount(org_id=org_id, overdrawn_since=now)
                session.add(account)
            overdrawn.append(org_id)
            since = account.overdrawn_since or now
            if account.stopped_at is None and now - since >= grace:
                ids: list[str] = []
                for path in BILLING_SUSPENDERS:
                    ids += resolve(path)(session, org_id)
                account.stopped_at = now
                events.emit(
                    session,
                    "billing.deployments_stopped",
                    org_id,
                    {"org_id": org_id, "stopped": ids, "reason": "insufficient_credits"},
                )
                stopped.append(org_id)
    return {"overdrawn": overdrawn, "stopped": stopped}
