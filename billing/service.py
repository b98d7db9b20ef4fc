"""Billing rules: usage totals and their cost, credits, and the submit-time credit check.
Functions take the caller's session and never commit.

Money is integer micro-units of ``prices.currency()``. An organisation's *allowance* is the usage
its plan tier includes each month; beyond it, usage is paid from *credits* (a ledger: operator
grants, minus credits applied to invoices). A prepaid tier refuses new work once its month's
cost would exceed allowance + credits (402 ``quota_exceeded``, details ``{needed, balance}``).

Stable entry points for other domains (alerts): :func:`period_totals` and
:func:`credits_balance`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from billing import repository
from billing.errors import InsufficientCredits
from billing.prices import UNITS, Tier, currency, tier_for_plan
from common.errors import NotFound, ValidationFailed
from common.timeutil import utcnow
from plans import repository as plans_repository
from plans.service import CRAWL_KINDS, current_period, period_key

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


# --- periods ----------------------------------------------------------------------------------


def resolve_period(period: str = "current") -> str:
    """``current`` or ``YYYY-MM`` → ``YYYY-MM`` (422 otherwise)."""
    if period == "current":
        return period_key()
    if not _PERIOD.match(period):
        raise ValidationFailed(
            "period must be 'current' or YYYY-MM.",
            details=[
                {
                    "loc": ["query", "period"],
                    "msg": "expected current or YYYY-MM",
                    "type": "value_error",
                }
            ],
        )
    return period


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """The month ``YYYY-MM`` as [start, end) in UTC."""
    year, month = int(period[:4]), int(period[5:7])
    return current_period(datetime(year, month, 15, tzinfo=UTC))


def previous_period(period: str) -> str:
    start, _ = period_bounds(period)
    year, month = (start.year - 1, 12) if start.month == 1 else (start.year, start.month - 1)
    return f"{year:04d}-{month:02d}"


# --- recording usage --------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """One usage event to record (``idempotency_key`` names the subject and the interval)."""

    org_id: str
    meter: str
    quantity: int
    dimension: str
    subject_type: str
    subject_id: str
    occurred_at: datetime
    idempotency_key: str


def record_usage(session: Session | Connection, usages: Iterable[Usage]) -> int:
    """Insert the events (a key already written is skipped) and add what was inserted to the
    rollups, in the caller's transaction; how many were new. An event of a month already invoiced
    for its organisation goes into the current month (an adjustment on the next invoice)."""
    current = period_key()
    closed: dict[tuple[str, str], bool] = {}
    rows: list[dict[str, Any]] = []
    for usage in usages:
        if usage.quantity <= 0:
            continue
        if usage.meter not in UNITS:
            raise ValueError(f"unknown meter {usage.meter!r}")
        period = period_key(usage.occurred_at)
        if period != current:
            key = (usage.org_id, period)
            if key not in closed:
                closed[key] = repository.invoiced(session, usage.org_id, period)
            if closed[key]:
                period = current
        rows.append(
            {
                "org_id": usage.org_id,
                "meter": usage.meter,
                "dimension": usage.dimension[:100],
                "quantity": usage.quantity,
                "unit": UNITS[usage.meter],
                "subject_type": usage.subject_type,
                "subject_id": usage.subject_id,
                "occurred_at": usage.occurred_at,
                "period": period,
                "idempotency_key": usage.idempotency_key,
                "created_at": utcnow(),
            }
        )
    if repository.dialect_of(session) == "postgresql":
        return repository.insert_events_with_rollups(session, rows)
    inserted = repository.insert_events(session, rows)
    sums: dict[tuple[str, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in inserted:
        day = row.occurred_at.astimezone(UTC).strftime("%Y-%m-%d")
        total = sums[(row.org_id, row.period, day, row.meter, row.dimension)]
        total[0] += int(row.quantity)
        total[1] += 1
    repository.add_to_rollups(
        session,
        [
            {
                "org_id": o,
                "period": p,
                "day": d,
                "meter": m,
                "dimension": dim,
                "quantity": q,
                "events": n,
            }
            for (o, p, d, m, dim), (q, n) in sums.items()
        ],
    )
    return len(inserted)


# --- totals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    """A meter's (or a meter and dimension's) quantity and cost in one month."""

    quantity: int
    cost_micros: int


def org_tier(session: Session, org_id: str) -> tuple[str, Tier]:
    found = plans_repository.get_org_plan(session, org_id)
    if found is None:
        raise NotFound("Organisation not found.")
    return str(found.org_plan), tier_for_plan(str(found.org_plan))


def line_totals(session: Session, org_id: str, period: str) -> dict[tuple[str, str], Totals]:
    """``(meter, dimension) → Totals`` of the month, priced at the organisation's tier."""
    _, tier = org_tier(session, org_id)
    out: dict[tuple[str, str], Totals] = {}
    for meter, dimension, quantity, _events in repository.rollup_totals(session, org_id, period):
        qty = int(quantity)
        out[(meter, dimension)] = Totals(qty, tier.price(meter, dimension).cost(qty))
    return out


def period_totals(session: Session, org_id: str, period: str = "current") -> dict[str, Totals]:
    """``meter → Totals`` (quantity and cost in micro-units) of one organisation's month
    (``current`` or ``YYYY-MM``), from the rollups: milliseconds whatever the number of events."""
    out: dict[str, Totals] = {}
    for (meter, _), line in line_totals(session, org_id, resolve_period(period)).items():
        seen = out.get(meter, Totals(0, 0))
        out[meter] = Totals(seen.quantity + line.quantity, seen.cost_micros + line.cost_micros)
    return out


def credits_balance(session: Session, org_id: str) -> int:
    """The organisation's credit ledger balance in micro-units (grants minus credits applied to
    invoices), not counting this month's usage (see :func:`credit_position`)."""
    return repository.credit_sum(session, org_id)


@dataclass(frozen=True)
class CreditPosition:
    plan: str
    tier: Tier
    period: str
    spent_micros: int  # this month's cost so far
    balance_micros: int  # the ledger
    allowance_left_micros: int
    credits_left_micros: int  # the ledger minus this month's cost beyond the allowance

    @property
    def available_micros(self) -> int:
        return self.allowance_left_micros + self.credits_left_micros


def credit_position(
    session: Session,
    org_id: str,
    *,
    tier: tuple[str, Tier] | None = None,
    spent_micros: int | None = None,
) -> CreditPosition:
    """Where the organisation stands this month; ``tier`` and ``spent_micros`` when the caller
    already read them (the usage endpoint)."""
    plan, found = tier or org_tier(session, org_id)
    period = period_key()
    if spent_micros is None:
        rows = repository.rollup_totals(session, org_id, period)
        spent_micros = sum(found.price(m, d).cost(int(q)) for m, d, q, _ in rows)
    balance = credits_balance(session, org_id)
    beyond = max(0, spent_micros - found.allowance_micros)
    return CreditPosition(
        plan=plan,
        tier=found,
        period=period,
        spent_micros=spent_micros,
        balance_micros=balance,
        allowance_left_micros=max(0, found.allowance_micros - spent_micros),
        credits_left_micros=balance - beyond,
    )


def estimate_job_cost(tier: Tier, kind: str, input: Mapping[str, Any]) -> int:
    """The least a ``kind`` job will cost: its job fee, and one page for a crawl."""
    cost = tier.price("jobs", kind).cost(1)
    if kind in CRAWL_KINDS:
        cost += tier.price("pages_crawled", "static").cost(1)
    return cost


def check_credits(
    session: Session,
    org_id: str,
    kind: str,
    *inputs: Mapping[str, Any],
    plan: str | None = None,
) -> None:
    """402 ``quota_exceeded`` (details ``{needed, balance}``) when a prepaid organisation cannot
    pay for new ``kind`` jobs (one per input) from its allowance and credits. Called by
    ``jobs.service.create_job`` before anything is inserted or queued; ``plan``: the
    organisation's plan name when the caller already read it."""
    found = (plan, tier_for_plan(plan)) if plan is not None else org_tier(session, org_id)
    tier = found[1]
    if not tier.prepaid:
        return
    position = credit_position(session, org_id, tier=found)
    needed = sum(estimate_job_cost(tier, kind, input) for input in inputs)
    if needed > position.available_micros:
        raise InsufficientCredits(
            "Not enough credits for this operation: it needs "
            f"{needed} micro-{currency()} and {max(0, position.available_micros)} are left "
            "(plan allowance and credits).",
            details={
                "needed": needed,
                "balance": position.credits_left_micros,
                "allowance_left": position.allowance_left_micros,
                "reason": "insufficient_credits",
            },
        )


def grant_credits(
    session: Session, org_id: str, amount_micros: int, reason: str
) -> tuple[str, int]:
    """Add a ledger entry (the operator's grant); its id and the new balance."""
    if plans_repository.get_org(session, org_id) is None:
        raise NotFound("Organisation not found.")
    if amount_micros == 0:
        raise ValidationFailed(
            "amount_micros must not be 0.",
            details=[
                {"loc": ["body", "amount_micros"], "msg": "must not be 0", "type": "value_error"}
            ],
        )
    entry = repository.add_credit(session, org_id, amount_micros, reason)
    return entry.id, credits_balance(session, org_id)


def usage_lines(
    session: Session, tier: Tier, org_id: str, period: str, *, by_day: bool = False
) -> list[dict[str, Any]]:
    """Priced lines of a month per meter and dimension (and day), from the rollups."""
    out: list[dict[str, Any]] = []
    for row in repository.rollup_totals(session, org_id, period, by_day=by_day):
        meter, dimension, quantity, events = row[0], row[1], int(row[-2]), int(row[-1])
        out.append(
            _priced(tier, meter, dimension, quantity, events, day=row[2] if by_day else None)
        )
    return out


def subject_lines(
    session: Session, tier: Tier, org_id: str, period: str, *, limit: int
) -> list[dict[str, Any]]:
    """Priced lines of a month per subject (job, deployment, resource), meter and dimension."""
    rows = repository.subject_totals(session, org_id, period, limit=limit)
    return [
        _priced(tier, m, dim, int(qty), int(n), subject_type=kind, subject_id=subject)
        for kind, subject, m, dim, qty, n in rows
    ]


def _priced(
    tier: Tier, meter: str, dimension: str, quantity: int, events: int, **extra: Any
) -> dict[str, Any]:
    price = tier.price(meter, dimension)
    return {
        "meter": meter,
        "dimension": dimension,
        "unit": UNITS.get(meter, ""),
        "quantity": quantity,
        "events": events,
        "unit_price_micros": price.micros,
        "per": price.per,
        "cost_micros": price.cost(quantity),
        **extra,
    }
