"""The e-mail channel: each transition is mailed once, through a real local SMTP server
(aiosmtpd), by the ``alerts.send_email`` task on a real worker after the evaluation commits."""

from __future__ import annotations

import time
from typing import Any

from tests.alerts.conftest import (
    Mailbox,
    add_deployment,
    create_alert,
    evaluate,
    set_deployment_status,
    wait_until,
)
from tests.conftest import OrgKey


def test_firing_and_resolved_are_mailed_once_each(
    client: Any, org: OrgKey, worker: Any, smtp: Mailbox
) -> None:
    from alerts.models import AlertEvent
    from store.db import session_scope

    dep = add_deployment(org, "running")
    alert = create_alert(
        client,
        org,
        {
            "name": "gpu box",
            "condition": {"type": "deployment_status", "subject_id": dep, "for": 0},
            "channels": [{"type": "email", "to": ["ops@example.com", "oncall@example.com"]}],
        },
    )
    set_deployment_status(dep, "degraded")
    assert evaluate(org)["firing"] == 1
    wait_until(lambda: len(smtp.messages) >= 1)
    set_deployment_status(dep, "running")
    assert evaluate(org)["resolved"] == 1
    wait_until(lambda: len(smtp.messages) >= 2)
    time.sleep(0.5)
    assert len(smtp.messages) == 2
    (sender, rcpts, firing), (_, _, resolved) = smtp.messages
    assert sender == "alerts@conveyor.test"
    assert sorted(rcpts) == ["oncall@example.com", "ops@example.com"]
    assert firing["Subject"] == "[Conveyor] FIRING: gpu box"
    assert resolved["Subject"] == "[Conveyor] RESOLVED: gpu box"
    body = firing.get_payload(decode=True)
    assert isinstance(body, bytes) and alert["id"].encode() in body and b"degraded" in body
    with session_scope() as session:
        stamped = session.query(AlertEvent).filter(AlertEvent.alert_id == alert["id"]).all()
        assert len(stamped) == 2 and all(e.emailed_at is not None for e in stamped)


def test_a_redelivered_email_task_sends_nothing_twice(
    client: Any, org: OrgKey, worker: Any, smtp: Mailbox
) -> None:
    from alerts.jobs import send_email
    from alerts.models import AlertEvent
    from store.db import session_scope

    dep = add_deployment(org, "failed")
    alert = create_alert(
        client,
        org,
        {
            "name": "once",
            "condition": {"type": "deployment_status", "subject_id": dep, "for": 0},
            "channels": [{"type": "email", "to": ["ops@example.com"]}],
        },
    )
    assert evaluate(org)["firing"] == 1
    wait_until(lambda: len(smtp.messages) >= 1)
    with session_scope() as session:
        event = session.query(AlertEvent).filter(AlertEvent.alert_id == alert["id"]).one()
        event_id = event.id
    wait_until(lambda: _emailed(event_id))
    assert send_email(event_id) is False  # the same message again: already sent
    time.sleep(0.3)
    assert len(smtp.messages) == 1


def _emailed(event_id: str) -> bool:
    from alerts.models import AlertEvent
    from store.db import session_scope

    with session_scope() as session:
        event = session.get(AlertEvent, event_id)
        return event is not None and event.emailed_at is not None
