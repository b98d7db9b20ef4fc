"""Plans, quotas and usage: the rules. Functions take the caller's session and never commit.

Quotas are checked when a job is created (:func:`enforce_quota`):

* every kind: queued + running jobs below the plan's ``concurrent_jobs``;
* crawls: pages crawled this calendar month below ``pages_per_month``;
* inference: GPU seconds this month (recorded by the inference workers with
  :func:`record_usage`) below ``gpu_seconds_per_month``.

Over a quota → :class:`QuotaExceeded` (402 ``quota_exceeded``) with a message that says what was
used of what, e.g. ``"You've used 100 / 100 pages this month."``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from common.errors import NotFound, QuotaExceeded, ValidationFailed
from common.timeutil import utcnow
from plans import repository
from plans.models import Plan
from plans.schemas import PlanLimits, RateLimits, UsageMeter, UsageReport
from store.models import Organization

ACTIVE_STATUSES = ("queued", "running")
CRAWL_KINDS = ("crawl", "crawl_batch")
GPU_KINDS = ("inference",)
METRIC_GPU_SECONDS = "gpu_seconds"
METRIC_REPLICA_SECONDS = "replica_seconds"
METRIC_PAGES = "pages"

#: Built-in plans, written to the ``plans`` table by the migration and re-created on demand.
DEFAULT_PLANS: dict[str, PlanLimits] = {
    p.name: p
    for p in (
        PlanLimits(
            name="free",
            pages_per_month=1_000,
            concurrent_jobs=20,
            gpu_seconds_per_month=3_600,
            max_pages_per_crawl=500,
            read_per_minute=120,
            write_per_minute=60,
            max_backup_retention_days=7,
            max_backup_retention_count=10,
        ),
        PlanLimits(
            name="starter",
            pages_per_month=20_000,
            concurrent_jobs=50,
            gpu_seconds_per_month=36_000,
            max_pages_per_crawl=5_000,
            read_per_minute=600,
            write_per_minute=300,
            max_backup_retention_days=30,
            max_backup_retention_count=50,
        ),
        PlanLimits(
            name="pro",
            pages_per_month=200_000,
            concurrent_jobs=200,
            gpu_seconds_per_month=360_000,
            max_pages_per_crawl=50_000,
            read_per_minute=3_000,
            write_per_minute=1_500,
            max_backup_retention_days=90,
            max_backup_retention_count=200,
        ),
        PlanLimits(
            name="unlimited",
            pages_per_month=10**12,
            concurrent_jobs=10**6,
            gpu_seconds_per_month=10**12,
            max_pages_per_crawl=10**6,
            read_per_minute=10**6,
            write_per_minute=10**6,
            max_backup_retention_days=3650,
            max_backup_retention_count=10**6,
        ),
    )
}
DEFAULT_PLAN = "free"


def current_period(now: datetime | None = None) -> tuple[datetime, datetime]:
    """The calendar month (UTC) containing ``now``: [start, end)."""
    moment = (now or utcnow()).astimezone(UTC)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def period_key(now: datetime | None = None) -> str:
    return current_period(now)[0].strftime("%Y-%m")


def plan_limits(session: Session, name: str) -> PlanLimits:
    """The limits of plan ``name`` (the table first, then the built-in defaults, then free)."""
    return _limits_of(repository.get_plan(session, name), name)


def _limits_of(row: Any, name: str) -> PlanLimits:
    """A plan's limits from its row (an ORM ``Plan`` or a Core row), or the built-in ones."""
    if row is not None:
        return PlanLimits.model_validate(row)
    return DEFAULT_PLANS.get(name) or DEFAULT_PLANS[DEFAULT_PLAN]


def plan_for_org(session: Session, org_id: str) -> PlanLimits:
    org = repository.get_org(session, org_id)
    if org is None:
        raise NotFound("Organisation not found.")
    return plan_limits(session, org.plan)


def rate_limits_for_org(session: Session, org_id: str) -> RateLimits:
    plan = plan_for_org(session, org_id)
    return RateLimits(read_per_minute=plan.read_per_minute, write_per_minute=plan.write_per_minute)


def record_usage(session: Session, org_id: str, metric: str, amount: int) -> None:
    """Add metered usage (e.g. ``record_usage(s, org, "gpu_seconds", 12)``) to this month."""
    if amount <= 0:
        return
    repository.add_to_counters(session, org_id, period_key(), {metric: amount})


def record_usages(executor: Session | Connection, org_id: str, amounts: dict[str, int]) -> None:
    """Add several metrics' usage to this month in one statement (the inference job path)."""
    repository.add_to_counters(executor, org_id, period_key(), amounts)


def pages_used(session: Session | Connection, org_id: str, now: datetime | None = None) -> int:
    start, _ = current_period(now)
    from_jobs = repository.pages_crawled_since(session, org_id, start, CRAWL_KINDS)
    return from_jobs + repository.get_counter(session, org_id, period_key(now), METRIC_PAGES)


def gpu_seconds_used(
    session: Session | Connection, org_id: str, now: datetime | None = None
) -> int:
    return repository.get_counter(session, org_id, period_key(now), METRIC_GPU_SECONDS)


def _meter(used: int, limit: int) -> UsageMeter:
    return UsageMeter(used=used, limit=limit, remaining=max(0, limit - used))


def usage_report(session: Session, org_id: str) -> UsageReport:
    org = repository.get_org(session, org_id)
    if org is None:
        raise NotFound("Organisation not found.")
    plan = plan_limits(session, org.plan)
    start, end = current_period()
    active = repository.count_active_jobs(
        session, org_id, ACTIVE_STATUSES, at_most=min(plan.concurrent_jobs, UNLIMITED)
    )
    return UsageReport(
        plan=org.plan,
        period_start=start,
        period_end=end,
        pages=_meter(pages_used(session, org_id), plan.pages_per_month),
        gpu_seconds=_meter(gpu_seconds_used(session, org_id), plan.gpu_seconds_per_month),
        concurrent_jobs=_meter(active, plan.concurrent_jobs),
        max_pages_per_crawl=plan.max_pages_per_crawl,
        rate_limits=RateLimits(
            read_per_minute=plan.read_per_minute, write_per_minute=plan.write_per_minute
        ),
        replica_seconds=repository.get_counter(
            session, org_id, period_key(), METRIC_REPLICA_SECONDS
        ),
    )


#: A plan limit this high means "no limit": nothing is counted or locked for it.
UNLIMITED = 10**6


@dataclass(frozen=True)
class OrgPlan:
    """An organisation's plan: its name and limits."""

    name: str
    limits: PlanLimits

    @property
    def counts_concurrency(self) -> bool:
        """Whether creating a job must count the active ones (under the org row's lock)."""
        return self.limits.concurrent_jobs < UNLIMITED


def org_plan(executor: Session | Connection, org_id: str) -> OrgPlan:
    """The organisation's plan in one query; 404 when the organisation does not exist."""
    found = repository.get_org_plan(executor, org_id)
    if found is None:
        raise NotFound("Organisation not found.")
    row = found if found.name is not None else None  # no plan row: the built-in limits
    return OrgPlan(found.org_plan, _limits_of(row, found.org_plan))


def enforce_quota(
    session: Session,
    org_id: str,
    kind: str,
    *inputs: Mapping[str, Any],
    plan: OrgPlan | None = None,
) -> None:
    """Raise 402 ``quota_exceeded`` when creating ``kind`` jobs (one per input) would go over
    the plan.

    On PostgreSQL the organisation row is locked for the rest of the caller's transaction, so
    concurrent creations for one organisation are counted one after the other. ``plan``: the
    organisation's plan when the caller already read it.
    """
    plan = plan or org_plan(session, org_id)
    limit = plan.limits.concurrent_jobs
    if plan.counts_concurrency:
        # Lock the org row so concurrent creations are counted one after the other.
        repository.get_org(session, org_id, lock=True)
        active = repository.count_active_jobs(session, org_id, ACTIVE_STATUSES, at_most=limit)
        if active + len(inputs) > limit:
            raise QuotaExceeded(
                f"You have {active} / {limit} concurrent jobs queued or running "
                f"on the {plan.name} plan"
                + (f"; {len(inputs)} more would go over it." if len(inputs) > 1 else "."),
                details={"quota": "concurrent_jobs", "used": active, "limit": limit},
            )
    for input in inputs:
        check_usage(session, org_id, plan, kind, input)


def check_usage(
    executor: Session | Connection,
    org_id: str,
    current: OrgPlan,
    kind: str,
    input: Mapping[str, Any],
) -> None:
    """The monthly metered quotas and per-job caps of ``kind`` (reads only, no lock)."""
    plan = current.limits
    if kind in CRAWL_KINDS:
        used = pages_used(executor, org_id)
        if used >= plan.pages_per_month:
            raise QuotaExceeded(
                f"You've used {used} / {plan.pages_per_month} pages this month.",
                details={"quota": "pages_per_month", "used": used, "limit": plan.pages_per_month},
            )
        requested = input.get("max_pages")
        if isinstance(requested, int) and requested > plan.max_pages_per_crawl:
            raise ValidationFailed(
                f"max_pages {requested} is above your plan's cap of "
                f"{plan.max_pages_per_crawl} pages per crawl.",
                details=[
                    {
                        "loc": ["body", "max_pages"],
                        "msg": f"must be at most {plan.max_pages_per_crawl}",
                        "type": "less_than_equal",
                    }
                ],
            )
    if kind in GPU_KINDS:
        used = gpu_seconds_used(executor, org_id)
        if used >= plan.gpu_seconds_per_month:
            raise QuotaExceeded(
                f"You've used {used} / {plan.gpu_seconds_per_month} GPU seconds this month.",
                details={
                    "quota": "gpu_seconds_per_month",
                    "used": used,
                    "limit": plan.gpu_seconds_per_month,
                },
            )


# --- administration (CLI) -------------------------------------------------------------------


def ensure_default_plans(session: Session) -> None:
    """Create any missing built-in plan (existing rows are left as an admin changed them)."""
    for limits in DEFAULT_PLANS.values():
        if repository.get_plan(session, limits.name) is None:
            session.add(Plan(**limits.model_dump()))
    session.flush()


def define_plan(session: Session, limits: PlanLimits) -> Plan:
    """Create or update a plan."""
    row = repository.get_plan(session, limits.name)
    if row is None:
        row = Plan(**limits.model_dump())
        session.add(row)
    else:
        for field, value in limits.model_dump().items():
            setattr(row, field, value)
    session.flush()
    return row


def create_org(session: Session, name: str, plan: str = DEFAULT_PLAN) -> Organization:
    ensure_default_plans(session)
    if repository.get_plan(session, plan) is None:
        raise NotFound(f"Plan {plan!r} does not exist.")
    if repository.get_org_by_name_or_id(session, name) is not None:
        raise ValidationFailed(f"An organisation named {name!r} already exists.")
    org = Organization(name=name, plan=plan)
    session.add(org)
    session.flush()
    return org


def set_plan(session: Session, org_ref: str, plan: str) -> Organization:
    ensure_default_plans(session)
    org = repository.get_org_by_name_or_id(session, org_ref)
    if org is None:
        raise NotFound(f"Organisation {org_ref!r} not found.")
    if repository.get_plan(session, plan) is None:
        raise NotFound(f"Plan {plan!r} does not exist.")
    org.plan = plan
    session.flush()
    return org
