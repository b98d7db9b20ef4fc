"""Measuring each condition type: ``measure(session, org_id, condition, run)`` → whether it holds
now, the observed value and what was seen.

Every measure is one indexed query (or one cached broker read); ``EvaluationRun`` shares what a
whole evaluation run needs once (the queue snapshot). ``SUBJECTS`` maps a ``deployment_status``
subject type to the function that reads its status, so a new kind of subject is one entry: a
model deployment's status, or an app project environment's last observed one (``running``,
``degraded`` while a replica is down, ``failed`` when its deploy failed and nothing serves it,
``stopped``), written by the projects supervisor and the deploy jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from alerts import usage_source
from alerts.schemas import (
    BudgetCondition,
    DeploymentStatusCondition,
    ErrorRateCondition,
    QueueBacklogCondition,
    UsageCondition,
)
from deployments.models import Deployment
from monitoring.schemas import QueueStats
from projects.models import ProjectEnvironment
from store.models import Job

AnyCondition = (
    UsageCondition
    | BudgetCondition
    | DeploymentStatusCondition
    | ErrorRateCondition
    | QueueBacklogCondition
)


@dataclass(frozen=True)
class Measurement:
    holds: bool
    value: float | None
    details: dict[str, Any]


@dataclass
class EvaluationRun:
    """What one evaluation run shares between alerts: the time and the queue snapshot."""

    now: datetime
    _queues: list[QueueStats] | None = field(default=None, repr=False)

    def queues(self) -> list[QueueStats]:
        if self._queues is None:
            from monitoring.service import queue_stats

            self._queues = queue_stats()
        return self._queues


def _deployment_status(session: Session, org_id: str, subject_id: str) -> str | None:
    return session.scalar(
        select(Deployment.status).where(Deployment.id == subject_id, Deployment.org_id == org_id)
    )


def _environment_status(session: Session, org_id: str, subject_id: str) -> str | None:
    return session.scalar(
        select(ProjectEnvironment.status).where(
            ProjectEnvironment.id == subject_id, ProjectEnvironment.org_id == org_id
        )
    )


#: subject type → ``fn(session, org_id, subject_id) -> status | None`` (None: no such subject).
SUBJECTS: dict[str, Callable[[Session, str, str], str | None]] = {
    "deployment": _deployment_status,
    "project_environment": _environment_status,
}


def subject_exists(session: Session, org_id: str, subject_type: str, subject_id: str) -> bool:
    return SUBJECTS[subject_type](session, org_id, subject_id) is not None


def _measure_deployment(
    session: Session, org_id: str, cond: DeploymentStatusCondition, run: EvaluationRun
) -> Measurement:
    status = SUBJECTS[cond.subject_type](session, org_id, cond.subject_id)
    details = {"subject_type": cond.subject_type, "subject_id": cond.subject_id, "status": status}
    return Measurement(status in cond.statuses, None, details)


def _measure_error_rate(
    session: Session, org_id: str, cond: ErrorRateCondition, run: EvaluationRun
) -> Measurement:
    """Jobs of the kind created in the window, by outcome: one range scan of
    ``ix_jobs_org_kind_created`` (org_id, kind, created_at)."""
    since = run.now - timedelta(seconds=cond.window_seconds)
    failed = func.sum(case((Job.status == "failed", 1), else_=0))
    finished = func.sum(case((Job.status.in_(("completed", "failed")), 1), else_=0))
    row = session.execute(
        select(failed, finished).where(
            Job.org_id == org_id, Job.kind == cond.kind, Job.created_at >= since
        )
    ).one()
    n_failed, n_finished = int(row[0] or 0), int(row[1] or 0)
    ratio = n_failed / n_finished if n_finished else 0.0
    holds = n_finished >= cond.min_jobs and ratio >= cond.ratio
    details = {"kind": cond.kind, "failed": n_failed, "finished": n_finished}
    return Measurement(holds, round(ratio, 6), details)


def _measure_queue(
    session: Session, org_id: str, cond: QueueBacklogCondition, run: EvaluationRun
) -> Measurement:
    stats = next((q for q in run.queues() if q.name == cond.queue), None)
    depth = stats.depth if stats else 0
    age = stats.oldest_age_s if stats else None
    over_depth = cond.depth is not None and depth > cond.depth
    over_age = cond.oldest_age_seconds is not None and (age or 0.0) > cond.oldest_age_seconds
    details = {"queue": cond.queue, "depth": depth, "oldest_age_s": age}
    return Measurement(over_depth or over_age, float(depth), details)


def _measure_usage(
    session: Session, org_id: str, cond: UsageCondition, run: EvaluationRun
) -> Measurement:
    quantity = usage_source.period_quantity(session, org_id, cond.meter, run.now)
    details = {"meter": cond.meter, "quantity": quantity, "threshold": cond.threshold}
    return Measurement(quantity > cond.threshold, quantity, details)


def _measure_budget(
    session: Session, org_id: str, cond: BudgetCondition, run: EvaluationRun
) -> Measurement:
    cost = usage_source.period_cost_micros(session, org_id, run.now)
    details: dict[str, Any] = {"cost_micros": cost}
    if cond.amount_micros is not None:
        limit = cond.amount_micros
    else:
        balance = usage_source.credits_balance_micros(session, org_id)
        details["credits_micros"] = balance
        limit = int(balance * (cond.percent_of_credits or 0.0) / 100)
    details["limit_micros"] = limit
    return Measurement(cost > limit, float(cost), details)


_MEASURES: dict[type[Any], Callable[..., Measurement]] = {
    DeploymentStatusCondition: _measure_deployment,
    ErrorRateCondition: _measure_error_rate,
    QueueBacklogCondition: _measure_queue,
    UsageCondition: _measure_usage,
    BudgetCondition: _measure_budget,
}


def measure(session: Session, org_id: str, cond: AnyCondition, run: EvaluationRun) -> Measurement:
    return _MEASURES[type(cond)](session, org_id, cond, run)
