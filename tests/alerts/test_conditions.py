"""Each condition end to end: it fires once, resolves once, and its transitions reach a real
receiver as signed Standard Webhooks deliveries sent by a real worker."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from common.timeutil import utcnow
from tests.alerts.conftest import (
    add_deployment,
    create_alert,
    evaluate,
    events_of,
    payload_types,
    set_deployment_status,
    subscribe,
    verified_events,
    wait_until,
)
from tests.api_contract.receiver import Receiver
from tests.conftest import OrgKey
from tests.helpers import wait_for_job


def _state(client: Any, org: OrgKey, alert_id: str) -> str:
    return str(client.get(f"/v1/alerts/{alert_id}", headers=org.headers).json()["state"])


def _exactly(receiver: Receiver, secret: str, types: list[str]) -> list[dict[str, Any]]:
    """Wait for ``types`` to arrive, then make sure nothing more does."""
    wait_until(lambda: len(receiver.requests) >= len(types))
    time.sleep(0.5)
    events = verified_events(receiver, secret)
    # Deliveries run in parallel on the worker: order them as they happened.
    events.sort(key=lambda e: (e["data"]["created_at"], e["type"] == "alert.resolved"))
    assert payload_types(events) == types
    return events


def test_deployment_status_fires_after_for_and_resolves_after_as_long(
    client: Any, org: OrgKey, worker: Any, receiver: Receiver
) -> None:
    secret = subscribe(client, org, receiver)
    dep = add_deployment(org, "running")
    alert = create_alert(
        client,
        org,
        {
            "name": "model down",
            "condition": {"type": "deployment_status", "subject_id": dep, "for": 1},
        },
    )
    assert evaluate(org)["firing"] == 0
    set_deployment_status(dep, "failed")
    evaluate(org)
    assert _state(client, org, alert["id"]) == "pending"
    time.sleep(1.1)
    assert evaluate(org)["firing"] == 1
    assert evaluate(org)["firing"] == 0  # still failed: no second notification
    assert _state(client, org, alert["id"]) == "firing"

    set_deployment_status(dep, "running")
    assert evaluate(org)["resolved"] == 0  # clear, but not yet for 1 s
    assert _state(client, org, alert["id"]) == "firing"
    time.sleep(1.1)
    assert evaluate(org)["resolved"] == 1
    assert evaluate(org)["resolved"] == 0
    assert _state(client, org, alert["id"]) == "resolved"

    firing, resolved = _exactly(receiver, secret, ["alert.firing", "alert.resolved"])
    assert firing["data"]["alert_id"] == alert["id"]
    assert firing["data"]["details"] == {
        "subject_type": "deployment", "subject_id": dep, "status": "failed",
    }  # fmt: skip
    assert resolved["data"]["details"]["status"] == "running"
    logged = events_of(client, org, alert["id"])
    assert [e["state"] for e in logged] == ["resolved", "firing"]  # newest first
    assert logged[1]["id"] == firing["data"]["id"]


def test_error_rate_fires_on_the_failing_jobs_event_and_resolves_on_the_beat_task(
    client: Any, org: OrgKey, worker: Any, receiver: Receiver
) -> None:
    from workers import outbox

    secret = subscribe(client, org, receiver)
    alert = create_alert(
        client,
        org,
        {
            "name": "diagnostics failing",
            "condition": {
                "type": "error_rate",
                "kind": "diagnostics",
                "ratio": 0.5,
                "window_seconds": 600,
                "min_jobs": 2,
                "for": 0,
            },
        },
    )
    for _ in range(2):
        job = client.post(
            "/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1, "fail": True},
            headers=org.headers,
        ).json()  # fmt: skip
        wait_for_job(client, job["id"], org.headers, statuses=("failed",))
    # No explicit evaluation: the job.failed events triggered one (through the outbox).
    wait_until(lambda: len(receiver.requests) >= 1)
    assert _state(client, org, alert["id"]) == "firing"

    for _ in range(3):  # 2 failed of 5: 40 % < 50 %
        job = client.post(
            "/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1}, headers=org.headers
        ).json()
        wait_for_job(client, job["id"], org.headers)
    outbox.send([outbox.Message("alerts.evaluate", (), "maintenance")])  # what beat sends
    firing, resolved = _exactly(receiver, secret, ["alert.firing", "alert.resolved"])
    assert firing["data"]["value"] == 1.0
    assert firing["data"]["details"] == {"kind": "diagnostics", "failed": 2, "finished": 2}
    assert resolved["data"]["value"] == 0.4
    assert resolved["data"]["details"] == {"kind": "diagnostics", "failed": 2, "finished": 5}


def test_queue_backlog_fires_and_resolves_from_the_brokers_depth(
    client: Any, org: OrgKey, worker: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitoring.service import measure_queues
    from monitoring.settings import get_monitoring_settings
    from workers.outbox import broker_redis

    monkeypatch.setattr(get_monitoring_settings(), "health_cache_seconds", 0.0)
    secret = subscribe(client, org, receiver)
    # The in-process worker does not consume `inference`; a marker left there is backlog.
    baseline = next(q.depth for q in measure_queues() if q.name == "inference")
    alert = create_alert(
        client,
        org,
        {
            "name": "inference backlog",
            "condition": {
                "type": "queue_backlog",
                "queue": "inference",
                "depth": baseline,
                "for": 0,
            },
        },
    )
    assert evaluate(org)["firing"] == 0
    observed = client.get(f"/v1/alerts/{alert['id']}", headers=org.headers).json()
    assert observed["state"] == "ok" and observed["last_value"] == baseline
    assert observed["last_evaluated_at"] is not None  # recorded without a state write
    marker = json.dumps({"marker": alert["id"]})
    broker_redis().lpush("inference", marker)
    try:
        assert evaluate(org)["firing"] == 1
        assert evaluate(org)["firing"] == 0
    finally:
        broker_redis().lrem("inference", 0, marker)
    assert evaluate(org)["resolved"] == 1
    firing, resolved = _exactly(receiver, secret, ["alert.firing", "alert.resolved"])
    assert firing["data"]["details"]["depth"] == baseline + 1
    assert resolved["data"]["details"]["depth"] == baseline


def _use_gpu_seconds(org: OrgKey, seconds: int) -> None:
    """Meter GPU time the way the platform does: billing's usage events where billing is
    installed, the plans' usage counter otherwise (``alerts.usage_source`` reads the same)."""
    from alerts.usage_source import billing
    from store.db import session_scope

    service = billing()
    with session_scope() as session:
        if service is None:
            from plans.service import record_usage

            record_usage(session, org.org_id, "gpu_seconds", seconds)
            return
        now = utcnow()
        usage = service.Usage(
            org_id=org.org_id, meter="gpu_seconds", quantity=seconds, dimension="*",
            subject_type="deployment", subject_id="dep_test", occurred_at=now,
            idempotency_key=f"test:{org.org_id}:{now.isoformat()}:{seconds}",
        )  # fmt: skip
        service.record_usage(session, [usage])


def test_usage_fires_once_over_the_threshold_and_resolves_when_raised(
    client: Any, org: OrgKey, worker: Any, receiver: Receiver
) -> None:
    secret = subscribe(client, org, receiver)
    alert = create_alert(
        client,
        org,
        {
            "name": "gpu",
            "condition": {"type": "usage", "meter": "gpu_seconds", "threshold": 50, "for": 0},
        },
    )
    _use_gpu_seconds(org, 40)
    assert evaluate(org)["firing"] == 0
    _use_gpu_seconds(org, 20)
    assert evaluate(org)["firing"] == 1
    assert evaluate(org)["firing"] == 0
    raised = client.patch(
        f"/v1/alerts/{alert['id']}",
        json={"condition": {"type": "usage", "meter": "gpu_seconds", "threshold": 100, "for": 0}},
        headers=org.headers,
    )
    assert raised.status_code == 200 and raised.json()["state"] == "ok"
    assert evaluate(org) == {"evaluated": 1, "firing": 0, "resolved": 0, "errors": 0}
    firing, resolved = _exactly(receiver, secret, ["alert.firing", "alert.resolved"])
    assert firing["data"]["value"] == 60.0
    assert resolved["data"]["details"] == {"reason": "condition_changed"}


def test_budget_over_a_share_of_credits_fires_and_resolves_when_credits_are_granted(
    client: Any, org: OrgKey, worker: Any, receiver: Receiver
) -> None:
    from alerts.usage_source import billing
    from store.db import session_scope

    service = billing()
    if service is None:
        # Without billing/ a budget cannot be measured: the rule is kept as it is, and the
        # evaluation says why instead of guessing.
        alert = create_alert(
            client, org,
            {"name": "spend", "condition": {"type": "budget", "amount_micros": 1, "for": 0}},
        )  # fmt: skip
        assert evaluate(org) == {"evaluated": 0, "firing": 0, "resolved": 0, "errors": 1}
        assert _state(client, org, alert["id"]) == "ok"
        return
    secret = subscribe(client, org, receiver)
    with session_scope() as session:
        service.grant_credits(session, org.org_id, 1_000_000, "test")
    alert = create_alert(
        client, org,
        {"name": "spend", "condition": {"type": "budget", "percent_of_credits": 50, "for": 0}},
    )  # fmt: skip
    _use_gpu_seconds(org, 10)
    assert evaluate(org)["firing"] == 0
    with session_scope() as session:
        cost = sum(t.cost_micros for t in service.period_totals(session, org.org_id).values())
    assert 0 < cost < 500_000
    _use_gpu_seconds(org, int(600_000 / (cost / 10)))  # past half the credits
    assert evaluate(org)["firing"] == 1
    assert evaluate(org)["firing"] == 0
    with session_scope() as session:
        service.grant_credits(session, org.org_id, 2_000_000, "top-up")
    assert evaluate(org)["resolved"] == 1
    firing, resolved = _exactly(receiver, secret, ["alert.firing", "alert.resolved"])
    assert firing["data"]["details"]["credits_micros"] == 1_000_000
    assert firing["data"]["details"]["cost_micros"] > 500_000
    assert resolved["data"]["details"]["credits_micros"] == 3_000_000
    assert _state(client, org, alert["id"]) == "resolved"


def test_a_deployment_event_evaluates_the_orgs_rules_without_waiting_for_beat(
    client: Any, org: OrgKey, worker: Any, receiver: Receiver
) -> None:
    from store.db import session_scope
    from webhooks.events import emit

    secret = subscribe(client, org, receiver)
    dep = add_deployment(org, "running")
    alert = create_alert(
        client,
        org,
        {"name": "down", "condition": {"type": "deployment_status", "subject_id": dep, "for": 0}},
    )
    with session_scope() as session:  # what the deployments domain does on a failure
        set_deployment_status(dep, "failed")
        emit(session, "deployment.failed", org.org_id, {"id": dep, "reason": "crash_loop"})
    (firing,) = _exactly(receiver, secret, ["alert.firing"])
    assert firing["data"]["alert_id"] == alert["id"]
    assert _state(client, org, alert["id"]) == "firing"


def test_a_failing_job_triggers_evaluation_even_when_no_webhook_listens(
    client: Any, org: OrgKey, worker: Any
) -> None:
    alert = create_alert(
        client,
        org,
        {
            "name": "unheard",
            "condition": {"type": "error_rate", "kind": "diagnostics", "ratio": 1, "for": 0},
            "channels": [],
        },
    )
    job = client.post(
        "/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1, "fail": True}, headers=org.headers
    ).json()
    wait_for_job(client, job["id"], org.headers, statuses=("failed",))
    wait_until(lambda: _state(client, org, alert["id"]) == "firing")
    assert [e["state"] for e in events_of(client, org, alert["id"])] == ["firing"]
