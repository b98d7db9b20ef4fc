"""Webhooks end to end: registration, signed deliveries from a real worker, log, redelivery."""

from __future__ import annotations

import time
from typing import Any

import standardwebhooks

from tests.api_contract.receiver import Receiver
from tests.conftest import OrgKey
from tests.helpers import wait_for_job


def _allow_receiver(monkeypatch: Any, receiver: Receiver) -> None:
    from config import get_settings

    port = receiver.server.server_address[1]
    monkeypatch.setattr(get_settings(), "crawl_allowed_hosts", f"127.0.0.1:{port}", raising=False)


def _wait(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_loopback_target_is_refused_without_allow_list(client: Any, org: OrgKey) -> None:
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "ftp://example.com/x"):
        response = client.post("/v1/webhooks", json={"url": url}, headers=org.headers)
        assert response.status_code == 422, url
        assert response.json()["error"]["code"] == "unsafe_url"


def test_org_webhook_receives_signed_job_events_and_logs_them(
    client: Any, org: OrgKey, worker: Any, receiver: Receiver, monkeypatch: Any
) -> None:
    _allow_receiver(monkeypatch, receiver)
    created = client.post(
        "/v1/webhooks",
        json={"url": receiver.url, "events": ["job.started", "job.completed"]},
        headers=org.headers,
    )
    assert created.status_code == 201, created.text
    hook = created.json()
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    fetched = client.get(f"/v1/webhooks/{hook['id']}", headers=org.headers).json()
    assert fetched["secret"] is None and fetched["events"] == ["job.completed", "job.started"]

    job = client.post(
        "/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1}, headers=org.headers
    ).json()
    wait_for_job(client, job["id"], org.headers)
    _wait(lambda: len(receiver.requests) >= 2)
    verifier = standardwebhooks.Webhook(secret)
    types = []
    for got in receiver.requests:
        event = verifier.verify(got.body, got.headers)
        assert event["data"]["id"] == job["id"]
        types.append(event["type"])
    assert sorted(types) == ["job.completed", "job.started"]
    completed = next(r for r in receiver.requests if b"job.completed" in r.body)
    assert verifier.verify(completed.body, completed.headers)["data"]["status"] == "completed"

    def logged() -> list[dict[str, Any]]:
        log = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=org.headers)
        assert log.status_code == 200
        data: list[dict[str, Any]] = log.json()["data"]
        return data

    # The worker records an attempt just after the receiver answered it.
    _wait(lambda: [d["status"] for d in logged()] == ["succeeded", "succeeded"])
    deliveries = logged()
    assert all(d["attempts"] == 1 and d["last_status_code"] == 204 for d in deliveries)

    first = deliveries[0]
    again = client.post(
        f"/v1/webhooks/{hook['id']}/deliveries/{first['id']}/redeliver", headers=org.headers
    )
    assert again.status_code == 202
    assert again.json()["msg_id"] == first["msg_id"]
    _wait(lambda: len(receiver.requests) >= 3)
    assert receiver.requests[-1].headers["webhook-id"] == first["msg_id"]

    assert client.delete(f"/v1/webhooks/{hook['id']}", headers=org.headers).status_code == 204
    assert client.get(f"/v1/webhooks/{hook['id']}", headers=org.headers).status_code == 404


def test_failed_delivery_is_retried_then_succeeds(
    client: Any, org: OrgKey, worker: Any, receiver: Receiver, monkeypatch: Any
) -> None:
    from config import get_settings

    _allow_receiver(monkeypatch, receiver)
    monkeypatch.setattr(get_settings(), "webhook_backoff_base_seconds", 0.2)
    receiver.script = [500, 503]
    hook = client.post(
        "/v1/webhooks", json={"url": receiver.url, "events": ["job.completed"]}, headers=org.headers
    ).json()
    job = client.post(
        "/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1}, headers=org.headers
    ).json()
    wait_for_job(client, job["id"], org.headers)
    _wait(lambda: len(receiver.requests) >= 3, timeout=30)

    def succeeded() -> bool:
        data = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=org.headers).json()
        return bool(data["data"]) and data["data"][0]["status"] == "succeeded"

    _wait(succeeded)
    (delivery,) = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=org.headers).json()[
        "data"
    ]
    assert delivery["attempts"] == 3
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {delivery["msg_id"]}  # the same message id on every retry


def test_per_job_webhook_secret_is_returned_once_and_stored_apart(
    client: Any, org: OrgKey, worker: Any, receiver: Receiver, monkeypatch: Any
) -> None:
    import json
    from types import SimpleNamespace

    _allow_receiver(monkeypatch, receiver)
    response = client.post(
        "/v1/diagnostics/sleep",
        json={
            "seconds": 0,
            "steps": 1,
            "webhook": {"url": receiver.url, "events": ["job.completed"]},
        },
        headers=org.headers,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    job = SimpleNamespace(id=body["id"])
    secret = body["webhook"]["secret"]
    assert secret.startswith("whsec_")
    assert body["webhook"]["url"] == receiver.url
    assert body["webhook"]["events"] == ["job.completed"]
    assert "webhook" not in body["input"]
    wait_for_job(client, job.id, org.headers)
    public = client.get(f"/v1/jobs/{job.id}", headers=org.headers).json()
    assert secret not in json.dumps(public)
    _wait(lambda: len(receiver.requests) >= 1)
    event = standardwebhooks.Webhook(secret).verify(
        receiver.requests[0].body, receiver.requests[0].headers
    )
    assert event["type"] == "job.completed" and event["data"]["id"] == job.id


def test_bad_per_job_webhook_is_a_field_level_422(org: OrgKey, migrated: Any) -> None:
    import pytest

    from common.errors import ValidationFailed
    from tests.helpers import create_job_now

    with pytest.raises(ValidationFailed) as info:
        create_job_now(
            "diagnostics", org.org_id, {"webhook": {"url": "https://x.test/h", "events": ["nope"]}}
        )
    assert info.value.details[0]["loc"][:3] == ["body", "webhook", "events"]


def test_progress_is_throttled_and_cancel_is_delivered(
    client: Any, org: OrgKey, worker: Any, receiver: Receiver, monkeypatch: Any
) -> None:
    _allow_receiver(monkeypatch, receiver)
    hook = client.post(
        "/v1/webhooks",
        json={"url": receiver.url, "events": ["job.progress", "job.completed", "job.cancelled"]},
        headers=org.headers,
    ).json()
    verifier = standardwebhooks.Webhook(hook["secret"])

    def events_of(job_id: str) -> list[str]:
        out = []
        for got in list(receiver.requests):
            event = verifier.verify(got.body, got.headers)
            if event["data"]["id"] == job_id:
                out.append(event["type"])
        return out

    # 20 progress steps in about a second: the 5 s throttle lets one job.progress through.
    done = client.post(
        "/v1/diagnostics/sleep", json={"seconds": 1, "steps": 20}, headers=org.headers
    ).json()
    wait_for_job(client, done["id"], org.headers)
    _wait(lambda: "job.completed" in events_of(done["id"]))
    time.sleep(0.3)
    assert events_of(done["id"]).count("job.progress") == 1
    assert events_of(done["id"]).count("job.completed") == 1

    running = client.post(
        "/v1/diagnostics/sleep", json={"seconds": 30, "steps": 300}, headers=org.headers
    ).json()
    wait_for_job(client, running["id"], org.headers, statuses=("running",))
    cancelled = client.post(f"/v1/jobs/{running['id']}/cancel", headers=org.headers)
    assert cancelled.json()["status"] == "cancelled"
    _wait(lambda: "job.cancelled" in events_of(running["id"]))
    assert "job.completed" not in events_of(running["id"])
