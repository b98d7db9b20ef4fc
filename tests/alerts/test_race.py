"""Concurrent evaluations of one rule: exactly one wins each transition, so exactly one event
and one notification, never a flood."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import func, select

from tests.alerts.conftest import (
    add_deployment,
    create_alert,
    evaluate,
    set_deployment_status,
    subscribe,
    verified_events,
    wait_until,
)
from tests.api_contract.receiver import Receiver
from tests.conftest import OrgKey


def _deliveries(org: OrgKey, event_type: str) -> int:
    from store.db import session_scope
    from webhooks.models import WebhookDelivery

    with session_scope() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(
                    WebhookDelivery.org_id == org.org_id, WebhookDelivery.event_type == event_type
                )
            )
            or 0
        )


def _failing_rule(client: Any, org: OrgKey, for_seconds: int) -> str:
    dep = add_deployment(org, "running")
    alert = create_alert(
        client,
        org,
        {
            "name": "race",
            "condition": {"type": "deployment_status", "subject_id": dep, "for": for_seconds},
        },
    )
    set_deployment_status(dep, "failed")
    return str(alert["id"])


def test_two_evaluations_interleaved_in_the_store_notify_once(
    client: Any, org: OrgKey, worker: Any, receiver: Receiver
) -> None:
    """Both read the rule before either writes; the second's compare-and-set waits for the
    first's commit, then finds the version moved and changes nothing."""
    from alerts import repository, service
    from alerts.conditions import EvaluationRun
    from common.timeutil import utcnow
    from store.db import get_sessionmaker

    secret = subscribe(client, org, receiver)
    alert_id = _failing_rule(client, org, 0)
    first, second = get_sessionmaker()(), get_sessionmaker()()
    try:
        a = repository.get_any(first, alert_id)
        b = repository.get_any(second, alert_id)
        assert a is not None and b is not None and a.version == b.version
        assert service.evaluate(first, a, EvaluationRun(now=utcnow())) == "firing"
        outcome: list[str | None] = []
        racer = threading.Thread(
            target=lambda: outcome.append(service.evaluate(second, b, EvaluationRun(utcnow())))
        )
        racer.start()
        time.sleep(0.3)  # the second is now blocked on the first's row lock (or done)
        first.commit()
        racer.join(10)
        second.commit()
    finally:
        first.close()
        second.close()
    assert outcome == [None]
    wait_until(lambda: len(receiver.requests) >= 1)
    time.sleep(0.5)
    assert [e["type"] for e in verified_events(receiver, secret)] == ["alert.firing"]
    assert _deliveries(org, "alert.firing") == 1


def test_many_concurrent_evaluation_runs_fire_once(
    client: Any, org: OrgKey, worker: Any, receiver: Receiver
) -> None:
    secret = subscribe(client, org, receiver)
    alert_id = _failing_rule(client, org, 1)
    evaluate(org)  # pending
    time.sleep(1.05)
    barrier = threading.Barrier(6)
    results: list[dict[str, int]] = []

    def run() -> None:
        barrier.wait()
        results.append(evaluate(org))

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sum(r["firing"] for r in results) == 1
    events = client.get(f"/v1/alerts/{alert_id}/events", headers=org.headers).json()["data"]
    assert [e["state"] for e in events] == ["firing"]
    wait_until(lambda: len(receiver.requests) >= 1)
    time.sleep(0.5)
    assert [e["type"] for e in verified_events(receiver, secret)] == ["alert.firing"]
