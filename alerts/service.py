"""Alert rules: CRUD on the caller's session, the evaluation state machine, and notifications.

State machine (``next_state``), with hysteresis of the condition's ``for_seconds``:

    ok | resolved --holds--> pending --held for_seconds--> firing --clear for_seconds--> resolved
                             pending --clear--> ok (a blip: nothing is notified)

Each evaluation writes the rule with a compare-and-set on its ``version``
(``repository.compare_and_set``); only the winner of a transition to ``firing`` or ``resolved``
records the event (unique per rule version) and its notifications, in the same transaction:
``alert.firing`` / ``alert.resolved`` through ``webhooks.events.emit`` and, for an ``email``
channel, an ``alerts.send_email`` task through the outbox. A rolled-back or lost evaluation
notifies nothing; exactly one notification per transition.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from alerts import conditions, repository
from alerts.conditions import AnyCondition, EvaluationRun, Measurement
from alerts.errors import EmailNotConfigured, UnknownSubject
from alerts.models import Alert, AlertEvent
from alerts.schemas import (
    AlertCreate,
    AlertEventOut,
    AlertOut,
    AlertPatch,
    Condition,
    DeploymentStatusCondition,
    EmailChannel,
)
from common import redis_clients
from common.errors import NotFound
from common.timeutil import isoformat_z, utcnow
from config import get_settings
from config.queues import MAINTENANCE
from store import pagination
from webhooks import events
from workers import outbox

log = logging.getLogger(__name__)

EVALUATE_ORG_TASK = "alerts.evaluate_org"
SEND_EMAIL_TASK = "alerts.send_email"
#: Events that can change a condition's answer → the condition types to evaluate at once.
TRIGGERS: dict[str, tuple[str, ...]] = {
    "job.failed": ("error_rate",),
    "deployment.failed": ("deployment_status",),
    "deployment.degraded": ("deployment_status",),
    "deployment.stopped": ("deployment_status",),
    "deployment.running": ("deployment_status",),
    "deployment.deleted": ("deployment_status",),
    "project.crashed": ("deployment_status",),
    "project.deploy.failed": ("deployment_status",),
    "project.deploy.succeeded": ("deployment_status",),
    "project.rollback.succeeded": ("deployment_status",),
}

DEBOUNCE_KEY = "conveyor:alerts:trigger:{key}"
#: One evaluation per burst: triggers within DEBOUNCE_MS of the first send none of their own;
#: the evaluation runs TRIGGER_DELAY_SECONDS (twice the window) after the first, so it sees
#: every event of the window committed.
DEBOUNCE_MS = 1000
TRIGGER_DELAY_SECONDS = 2.0

_condition_adapter: TypeAdapter[AnyCondition] = TypeAdapter(Condition)


def parse_condition(raw: Mapping[str, Any]) -> AnyCondition:
    return _condition_adapter.validate_python(raw)


# --- rules (request side) ---------------------------------------------------------------------


def _check(
    session: Session, org_id: str, cond: AnyCondition | None, channels: Sequence[Any]
) -> None:
    if isinstance(cond, DeploymentStatusCondition) and not conditions.subject_exists(
        session, org_id, cond.subject_type, cond.subject_id
    ):
        raise UnknownSubject(
            f"No {cond.subject_type} {cond.subject_id!r} in this organisation.",
            details=[
                {
                    "loc": ["body", "condition", "subject_id"],
                    "msg": "unknown subject",
                    "type": "value_error",
                }
            ],
        )
    if any(isinstance(c, EmailChannel) for c in channels) and not get_settings().smtp_host:
        raise EmailNotConfigured(
            "E-mail channels need an SMTP server: set CONVEYOR_SMTP_HOST (and _PORT, _FROM).",
            details=[
                {"loc": ["body", "channels"], "msg": "SMTP not configured", "type": "value_error"}
            ],
        )


def create(session: Session, org_id: str, body: AlertCreate) -> Alert:
    _check(session, org_id, body.condition, body.channels)
    alert = Alert(
        org_id=org_id,
        name=body.name,
        condition_type=body.condition.type,
        condition=body.condition.model_dump(mode="json"),
        channels=[c.model_dump(mode="json") for c in body.channels],
        enabled=body.enabled,
    )
    session.add(alert)
    session.flush()
    return alert


def get(session: Session, org_id: str, alert_id: str) -> Alert:
    alert = repository.get(session, org_id, alert_id) if len(alert_id) <= 64 else None
    if alert is None:
        raise NotFound("Alert not found.")
    return alert


def update(session: Session, org_id: str, alert_id: str, body: AlertPatch) -> Alert:
    """Apply a patch. Disabling a rule or changing its condition restarts it: a firing rule is
    resolved first (notified, reason ``disabled`` / ``condition_changed``)."""
    alert = get(session, org_id, alert_id)
    _check(session, org_id, body.condition, body.channels or [])
    restart = (body.enabled is False and alert.enabled) or (
        body.condition is not None and body.condition.model_dump(mode="json") != alert.condition
    )
    if restart:
        reason = "disabled" if body.enabled is False else "condition_changed"
        _reset(session, alert, reason)
    if body.name is not None:
        alert.name = body.name
    if body.condition is not None:
        alert.condition_type = body.condition.type
        alert.condition = body.condition.model_dump(mode="json")
    if body.channels is not None:
        alert.channels = [c.model_dump(mode="json") for c in body.channels]
    if body.enabled is not None:
        alert.enabled = body.enabled
    session.flush()
    return alert


def _reset(session: Session, alert: Alert, reason: str) -> None:
    """Back to ``ok`` (CAS); a firing rule notifies ``resolved`` with ``reason``."""
    values = {"state": "ok", "pending_since": None, "clear_since": None}
    for _ in range(10):  # an evaluation may move it between our read and our write
        session.refresh(alert)
        version, was = alert.version, alert.state
        if repository.compare_and_set(session, alert.id, version, values):
            if was == "firing":
                _notify(session, alert, version + 1, "resolved", None, {"reason": reason})
            break
    session.refresh(alert)


def delete(session: Session, org_id: str, alert_id: str) -> None:
    session.delete(get(session, org_id, alert_id))
    session.flush()


def list_alerts(
    session: Session, org_id: str, limit: int, cursor: str | None
) -> tuple[list[Alert], str | None]:
    query = repository.alerts_query(org_id)
    return pagination.list_page(session, query, Alert, limit=limit, cursor=cursor)


def list_events(
    session: Session, org_id: str, alert_id: str, limit: int, cursor: str | None
) -> tuple[list[AlertEvent], str | None]:
    get(session, org_id, alert_id)
    query = repository.events_query(org_id, alert_id)
    return pagination.list_page(session, query, AlertEvent, limit=limit, cursor=cursor)


def view(alert: Alert) -> AlertOut:
    return AlertOut.model_validate(alert, from_attributes=True)


def event_view(event: AlertEvent) -> AlertEventOut:
    return AlertEventOut.model_validate(event, from_attributes=True)


# --- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """What one evaluation changes: the new state, its timers, and the transition to notify."""

    state: str
    pending_since: datetime | None
    clear_since: datetime | None
    notify: str | None  # "firing" | "resolved" | None


def next_state(
    state: str,
    pending_since: datetime | None,
    clear_since: datetime | None,
    holds: bool,
    now: datetime,
    for_seconds: float,
) -> Step:
    """The state machine (module docstring), as a pure function of the observation ``holds``."""
    if state == "firing":
        if holds:
            return Step("firing", pending_since, None, None)
        clear_since = clear_since or now
        if (now - clear_since).total_seconds() >= for_seconds:
            return Step("resolved", None, None, "resolved")
        return Step("firing", pending_since, clear_since, None)
    if not holds:
        return Step("ok" if state == "pending" else state, None, None, None)
    pending_since = pending_since if state == "pending" and pending_since else now
    if (now - pending_since).total_seconds() >= for_seconds:
        return Step("firing", pending_since, None, "firing")
    return Step("pending", pending_since, None, None)


@dataclass(frozen=True)
class Decision:
    """An evaluation's outcome before it is written: the measurement and the step it implies."""

    alert_id: str
    version: int
    measured: Measurement
    step: Step
    moves: bool  # the state or a timer changes (a compare-and-set write), else only observed


def decide(session: Session, alert: Alert, run: EvaluationRun) -> Decision | None:
    """Measure ``alert``'s condition (reads only); None for a disabled rule."""
    if not alert.enabled:
        return None
    cond = parse_condition(alert.condition)
    measured = conditions.measure(session, alert.org_id, cond, run)
    step = next_state(
        alert.state, alert.pending_since, alert.clear_since, measured.holds, run.now,
        cond.for_seconds,
    )  # fmt: skip
    moves = bool(step.notify) or (step.state, step.pending_since, step.clear_since) != (
        alert.state,
        alert.pending_since,
        alert.clear_since,
    )
    return Decision(alert.id, alert.version, measured, step, moves)


def apply(session: Session, alert: Alert, decision: Decision, run: EvaluationRun) -> str | None:
    """Write a decision with a compare-and-set on the version it was measured at; returns the
    transition notified (``firing``/``resolved``), or None (none, or another evaluation won)."""
    step, measured = decision.step, decision.measured
    values: dict[str, Any] = {
        "state": step.state,
        "pending_since": step.pending_since,
        "clear_since": step.clear_since,
        "last_value": measured.value,
        "last_evaluated_at": run.now,
    }
    if step.notify:
        values["last_transition_at"] = run.now
    if not repository.compare_and_set(session, decision.alert_id, decision.version, values):
        return None  # a concurrent evaluation moved it first
    if step.notify:
        _notify(session, alert, decision.version + 1, step.notify, measured.value, measured.details)
    return step.notify


def evaluate(session: Session, alert: Alert, run: EvaluationRun) -> str | None:
    """Measure ``alert``'s condition and move its state on ``session`` (``decide`` + ``apply``);
    returns the transition notified by this call, or None."""
    decision = decide(session, alert, run)
    return apply(session, alert, decision, run) if decision is not None else None


def _notify(
    session: Session,
    alert: Alert,
    version: int,
    state: str,
    value: float | None,
    details: Mapping[str, Any],
) -> AlertEvent:
    """Record the transition (unique per rule version) and send it to the rule's channels once
    the caller's transaction commits."""
    event = AlertEvent(
        alert_id=alert.id,
        org_id=alert.org_id,
        version=version,
        state=state,
        value=value,
        details=dict(details),
        created_at=utcnow(),
    )
    session.add(event)
    session.flush()
    log.warning("alert %s (%s) %s: %s", alert.id, alert.name, state, dict(details))
    channel_types = {c.get("type") for c in alert.channels}
    if "webhook" in channel_types:
        events.emit(session, f"alert.{state}", alert.org_id, event_payload(alert, event))
    if "email" in channel_types:
        outbox.enqueue_task(session, SEND_EMAIL_TASK, [event.id], queue=MAINTENANCE)
    return event


def event_payload(alert: Alert, event: AlertEvent) -> dict[str, Any]:
    """The ``data`` of an ``alert.firing`` / ``alert.resolved`` webhook (and the e-mail's)."""
    return {
        "id": event.id,
        "alert_id": alert.id,
        "name": alert.name,
        "state": event.state,
        "value": event.value,
        "details": event.details,
        "condition": alert.condition,
        "created_at": isoformat_z(event.created_at),
    }


def on_event(session: Session, event_type: str, org_id: str, data: Mapping[str, Any]) -> None:
    """Event hook (``config.queues.EVENT_HOOKS``): an event that can change an organisation's
    rules (a job failing, a deployment's status) evaluates them after the commit, instead of
    waiting for the next beat run. One indexed query when the org has no such rule."""
    types = TRIGGERS.get(event_type)
    if not types or not repository.enabled_ids_for_org(session, org_id, types):
        return
    if not _first_in_window(f"{org_id}:{','.join(types)}"):
        return  # an evaluation is already on its way for this second's events
    outbox.enqueue_task(
        session,
        EVALUATE_ORG_TASK,
        [org_id, list(types)],
        queue=MAINTENANCE,
        countdown=TRIGGER_DELAY_SECONDS,
    )


def _first_in_window(key: str) -> bool:
    """Whether this is the first trigger of ``key`` in the debounce window (one evaluation for a
    burst of failures, not one each). Without Redis: True (an evaluation too many is harmless)."""
    try:
        client = redis_clients.client()
        return bool(client.set(DEBOUNCE_KEY.format(key=key), "1", nx=True, px=DEBOUNCE_MS))
    except redis.RedisError:
        return True


def measure_now(session: Session, alert: Alert, run: EvaluationRun) -> Measurement:
    """The condition's current measurement without changing the rule (diagnostics, tests)."""
    return conditions.measure(session, alert.org_id, parse_condition(alert.condition), run)
