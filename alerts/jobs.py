"""Worker-side work of the alerts domain: the evaluation runs (every rule, from beat; an
organisation's rules of some condition types, on an event) and sending alert e-mail.

Each rule is evaluated in its own short transaction, so one rule that cannot be measured (or a
lost race) never holds back the others.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from typing import Any

from alerts import repository, service
from alerts.conditions import EvaluationRun
from common.errors import ConveyorError
from common.timeutil import utcnow
from config import get_settings
from store.db import read_session, session_scope

log = logging.getLogger(__name__)

BATCH = 200


def evaluate_all() -> dict[str, int]:
    """Evaluate every enabled rule (the beat task, every ``alerts_evaluate_seconds``)."""
    run = EvaluationRun(now=utcnow())
    totals = {"evaluated": 0, "firing": 0, "resolved": 0, "errors": 0}
    after = ""
    while True:
        with read_session() as session:
            ids = repository.enabled_ids(session, after, BATCH)
        _evaluate_ids(ids, run, totals)
        if len(ids) < BATCH:
            return totals
        after = ids[-1]


def evaluate_org(org_id: str, types: Iterable[str]) -> dict[str, int]:
    """Evaluate ``org_id``'s enabled rules of these condition types (an event's trigger)."""
    run = EvaluationRun(now=utcnow())
    totals = {"evaluated": 0, "firing": 0, "resolved": 0, "errors": 0}
    with read_session() as session:
        ids = repository.enabled_ids_for_org(session, org_id, list(types))
    _evaluate_ids(ids, run, totals)
    return totals


def _evaluate_ids(ids: Sequence[str], run: EvaluationRun, totals: dict[str, int]) -> None:
    """Measure the rules with reads only; write in a transaction of its own (compare-and-set)
    only a rule whose state or timers move, and record the others' observations in one batch."""
    with read_session() as session:
        alerts = repository.get_many(session, ids) if ids else []
    observed: list[dict[str, Any]] = []
    for alert in alerts:
        try:
            with read_session() as session:
                decision = service.decide(session, alert, run)
            if decision is None:
                continue
            if not decision.moves:
                observed.append(
                    {
                        "id": alert.id,
                        "last_value": decision.measured.value,
                        "last_evaluated_at": run.now,
                    }
                )
                totals["evaluated"] += 1
                continue
            with session_scope() as session:
                notified = service.apply(session, alert, decision, run)
        except ConveyorError as exc:  # e.g. a condition this platform cannot measure
            log.warning("alert %s not evaluated: %s", alert.id, exc.message)
            totals["errors"] += 1
            continue
        except Exception:
            log.exception("alert %s: evaluation failed", alert.id)
            totals["errors"] += 1
            continue
        totals["evaluated"] += 1
        if notified:
            totals[notified] += 1
    if observed:
        with session_scope() as session:
            repository.record_observations(session, observed)


def send_email(event_id: str) -> bool:
    """Send an alert event's e-mail to the rule's ``email`` channels; True when sent. Marked
    sent in the store after the SMTP server accepted it, so a redelivered task sends no second
    mail once that commit happened. SMTP errors raise (the task retries)."""
    settings = get_settings()
    with session_scope() as session:
        event = repository.get_event(session, event_id)
        alert = repository.get_any(session, event.alert_id) if event else None
        if event is None or alert is None or event.emailed_at is not None:
            return False
        recipients = sorted(
            {to for c in alert.channels if c.get("type") == "email" for to in c.get("to", [])}
        )
        if not recipients:
            return False
        if not settings.smtp_host:
            log.warning("alert e-mail %s not sent: CONVEYOR_SMTP_HOST is not set", event_id)
            return False
        message = _message(service.event_payload(alert, event), recipients)
    _smtp_send(message)
    with session_scope() as session:
        event = repository.get_event(session, event_id)
        if event is not None:
            event.emailed_at = utcnow()
    return True


def _message(payload: dict[str, Any], recipients: list[str]) -> EmailMessage:
    settings = get_settings()
    state = str(payload["state"]).upper()
    message = EmailMessage()
    message["Subject"] = f"[Conveyor] {state}: {payload['name']}"
    message["From"] = settings.smtp_from
    message["To"] = ", ".join(recipients)
    lines = [
        f"Alert {payload['name']!r} ({payload['alert_id']}) is {payload['state']}.",
        f"Value: {payload['value']}",
        f"Details: {payload['details']}",
        f"Condition: {payload['condition']}",
        f"At: {payload['created_at']}",
        f"Event: {payload['id']}",
    ]
    message.set_content("\n".join(lines) + "\n")
    return message


def _smtp_send(message: EmailMessage) -> None:
    settings = get_settings()
    timeout = settings.smtp_timeout_seconds
    smtp: smtplib.SMTP
    if settings.smtp_ssl:
        smtp = smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=timeout)
    else:
        smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
    with smtp:
        if settings.smtp_starttls and not settings.smtp_ssl:
            smtp.starttls()
        if settings.smtp_username:
            smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
        smtp.send_message(message)
