"""The deployments API end to end with a real worker and real replica processes (stand-in
server): lifecycle jobs, proxying, 503 when stopped, revisions, logs, metrics, reconciler."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import wait_for_job

pytestmark = pytest.mark.usefixtures("stub_backend", "worker")


def wait_status(
    client: Any,
    dep_id: str,
    headers: dict[str, str],
    statuses: tuple[str, ...],
    timeout: float = 30,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/deployments/{dep_id}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"deployment still {body.get('status')}: {body}")


def create(client: Any, org: Any, **overrides: Any) -> dict[str, Any]:
    payload = {"name": "chat-1", "model": "tiny", "env": {"HF_TOKEN": "hf_supersecretvalue123"}}
    payload.update(overrides)
    response = client.post("/v1/deployments", json=payload, headers=org.headers)
    assert response.status_code == 202, response.text
    return dict(response.json())


def logged_events(caplog: pytest.LogCaptureFixture, dep_id: str) -> list[str]:
    """The webhook events logged for one deployment, in order."""
    return [
        r.getMessage().split()[1]
        for r in caplog.records
        if r.name == "webhooks.events" and dep_id in r.getMessage()
    ]


def pids_of(dep_id: str) -> list[int]:
    from deployments.models import Deployment
    from store.db import session_scope

    with session_scope() as session:
        dep = session.get(Deployment, dep_id)
        assert dep is not None
        state = dep.backend_state or {}
        return [int(r["pid"]) for r in state.get("data", {}).get("replicas", [])]


def test_create_runs_and_serves_chat_through_the_deployment_name(client: Any, org: Any) -> None:
    created = create(client, org)
    assert created["status"] == "pending"
    assert created["env"] == {"HF_TOKEN": "****"}
    assert created["links"]["job"].startswith("/v1/jobs/")
    assert created["replicas"] == {"min": 1, "max": 1}
    running = wait_status(client, created["id"], org.headers, ("running", "failed"))
    assert running["status"] == "running", running
    assert running["endpoint"].startswith("http://127.0.0.1:")
    job_id = created["links"]["job"].rsplit("/", 1)[1]
    job = wait_for_job(client, job_id, org.headers)
    assert job["status"] == "completed" and job["kind"] == "deploy"

    chat = client.post(
        "/v1/chat/completions",
        json={"model": "chat-1", "messages": [{"role": "user", "content": "hi"}]},
        headers=org.headers,
    )
    assert chat.status_code == 200, chat.text
    assert chat.headers["X-Conveyor-Deployment-Id"] == created["id"]
    assert chat.json()["choices"][0]["message"]["content"].startswith("port ")

    models = client.get("/v1/models", headers=org.headers).json()
    assert "chat-1" in [m["id"] for m in models["data"]]

    metrics = client.get(f"/v1/deployments/{created['id']}/metrics", headers=org.headers).json()
    assert metrics["requests"] == 1 and metrics["replicas_ready"] == 1
    assert metrics["latency_ms"]["p50"] is not None

    logs = client.get(f"/v1/deployments/{created['id']}/logs?tail=50", headers=org.headers)
    text = "\n".join(logs.json()["lines"])
    assert "stub server pid=" in text and "token=****" in text
    assert "hf_supersecretvalue123" not in text


def test_validation_conflict_and_isolation(client: Any, org: Any, other_org: Any) -> None:
    bad_model = client.post(
        "/v1/deployments", json={"name": "x", "model": "nope"}, headers=org.headers
    )
    assert bad_model.status_code == 422
    assert bad_model.json()["error"]["code"] == "validation_error"
    bad_name = client.post(
        "/v1/deployments", json={"name": "Bad Name!", "model": "tiny"}, headers=org.headers
    )
    assert bad_name.status_code == 422
    extra = client.post(
        "/v1/deployments", json={"name": "a", "model": "tiny", "gpus": 3}, headers=org.headers
    )
    assert extra.status_code == 422
    created = create(client, org, name="dup")
    again = client.post(
        "/v1/deployments", json={"name": "dup", "model": "tiny"}, headers=org.headers
    )
    assert again.status_code == 409
    hidden = client.get(f"/v1/deployments/{created['id']}", headers=other_org.headers)
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
    unknown = client.get("/v1/deployments?colour=red", headers=org.headers)
    assert unknown.status_code == 422
    stranger_chat = client.post(
        "/v1/chat/completions",
        json={"model": "dup", "messages": [{"role": "user", "content": "hi"}]},
        headers=other_org.headers,
    )
    assert stranger_chat.status_code == 404  # another org's deployment name is not a model
    wait_status(client, created["id"], org.headers, ("running",))


def test_list_filters_and_paginates(client: Any, org: Any) -> None:
    ids = [create(client, org, name=f"list-{n}")["id"] for n in range(3)]
    for dep_id in ids:
        wait_status(client, dep_id, org.headers, ("running",))
    page1 = client.get("/v1/deployments?limit=2", headers=org.headers).json()
    assert [d["id"] for d in page1["data"]] == ids[::-1][:2]
    page2 = client.get(
        f"/v1/deployments?limit=2&cursor={page1['next_cursor']}", headers=org.headers
    ).json()
    assert [d["id"] for d in page2["data"]] == [ids[0]] and page2["next_cursor"] is None
    running = client.get(
        "/v1/deployments?status=running,deploying&sort=created_at", headers=org.headers
    )
    assert [d["id"] for d in running.json()["data"]] == ids
    none = client.get("/v1/deployments?status=stopped", headers=org.headers).json()
    assert none["data"] == []
    bad = client.get("/v1/deployments?status=sleeping", headers=org.headers)
    assert bad.status_code == 422
    first = client.get(f"/v1/deployments/{ids[0]}", headers=org.headers).json()["created_at"]
    after = client.get(
        "/v1/deployments",
        params={"created_after": first, "sort": "created_at"},
        headers=org.headers,
    ).json()
    assert [d["id"] for d in after["data"]] == ids[1:]  # exclusive bound
    before = client.get(
        "/v1/deployments", params={"created_before": first}, headers=org.headers
    ).json()
    assert before["data"] == []


def test_stop_answers_503_then_start_scale_rollback_delete(client: Any, org: Any) -> None:
    dep = create(client, org, name="life")
    dep_id = dep["id"]
    wait_status(client, dep_id, org.headers, ("running",))
    chat = {"model": "life", "messages": [{"role": "user", "content": "hi"}]}

    stopped = client.post(f"/v1/deployments/{dep_id}/stop", headers=org.headers)
    assert stopped.status_code == 202 and stopped.json()["status"] == "stopping"
    wait_status(client, dep_id, org.headers, ("stopped",))
    time.sleep(1.1)  # the proxy caches a deployment's endpoints for a second
    unavailable = client.post("/v1/chat/completions", json=chat, headers=org.headers)
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["code"] == "unavailable"
    assert int(unavailable.headers["Retry-After"]) > 0

    client.post(f"/v1/deployments/{dep_id}/start", headers=org.headers)
    wait_status(client, dep_id, org.headers, ("running",))

    scaled = client.patch(
        f"/v1/deployments/{dep_id}", json={"replicas": {"min": 2, "max": 2}}, headers=org.headers
    )
    assert scaled.status_code == 202 and scaled.json()["revision"] == 2
    two = wait_status(client, dep_id, org.headers, ("running",))
    assert two["ready_replicas"] == 2
    time.sleep(1.1)
    ports = {
        client.post("/v1/chat/completions", json=chat, headers=org.headers).json()["choices"][0][
            "message"
        ]["content"]
        for _ in range(4)
    }
    assert len(ports) == 2  # requests spread over both replicas

    rolled = client.post(
        f"/v1/deployments/{dep_id}/rollback", json={"revision": 1}, headers=org.headers
    )
    assert rolled.status_code == 202 and rolled.json()["revision"] == 3
    assert rolled.json()["replicas"] == {"min": 1, "max": 1}
    one = wait_status(client, dep_id, org.headers, ("running",))
    assert one["ready_replicas"] == 1
    revisions = client.get(f"/v1/deployments/{dep_id}/revisions", headers=org.headers).json()
    assert [r["revision"] for r in revisions] == [3, 2, 1]
    assert revisions[0]["current"] and revisions[0]["reason"] == "rollback to revision 1"
    missing = client.post(
        f"/v1/deployments/{dep_id}/rollback", json={"revision": 9}, headers=org.headers
    )
    assert missing.status_code == 404

    pids = pids_of(dep_id)
    deleted = client.delete(f"/v1/deployments/{dep_id}", headers=org.headers)
    assert deleted.status_code == 202
    again = client.delete(f"/v1/deployments/{dep_id}", headers=org.headers)
    assert again.status_code == 202
    gone = wait_status(client, dep_id, org.headers, ("deleted",))
    assert gone["endpoint"] is None
    assert all(not psutil.pid_exists(pid) for pid in pids)
    assert client.get("/v1/deployments", headers=org.headers).json()["data"] == []
    reuse = create(client, org, name="life")  # the name is free again
    wait_status(client, reuse["id"], org.headers, ("running",))


def webhook_events(org_id: str) -> list[str]:
    from sqlalchemy import select

    from store.db import session_scope
    from webhooks.models import WebhookDelivery

    with session_scope() as session:
        rows = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.org_id == org_id)
            .order_by(WebhookDelivery.created_at)
        ).all()
        return [row.event_type for row in rows]


def test_reconciler_restarts_a_killed_replica_and_reports_events_in_order(
    client: Any,
    org: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    deploy_settings: Any,
) -> None:
    from deployments.jobs import reconcile_all

    monkeypatch.setattr(deploy_settings, "crawl_allowed_hosts", "127.0.0.1")
    hook = client.post(
        "/v1/webhooks",
        json={
            "url": "http://127.0.0.1:9/hook",
            "events": ["deployment.created", "deployment.running", "deployment.degraded"],
        },
        headers=org.headers,
    )
    assert hook.status_code == 201, hook.text
    caplog.set_level(logging.INFO, logger="webhooks.events")
    dep = create(client, org, name="crashy")
    dep_id = dep["id"]
    wait_status(client, dep_id, org.headers, ("running",))
    (pid,) = pids_of(dep_id)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    reconcile_all()
    degraded = client.get(f"/v1/deployments/{dep_id}", headers=org.headers).json()
    assert degraded["status"] == "degraded", degraded
    assert degraded["status_reason"].startswith("replicas_not_ready")
    deadline = time.monotonic() + 30
    while (
        client.get(f"/v1/deployments/{dep_id}", headers=org.headers).json()["status"] != "running"
    ):
        assert time.monotonic() < deadline
        reconcile_all()
        time.sleep(0.1)
    assert pids_of(dep_id) != [pid]
    events = logged_events(caplog, dep_id)
    expected = [
        "deployment.created",
        "deployment.running",
        "deployment.degraded",
        "deployment.running",
    ]
    assert events == expected
    assert webhook_events(org.org_id) == expected  # signed deliveries, in order


def test_gpu_seconds_accrue_while_running(client: Any, org: Any) -> None:
    from deployments.jobs import reconcile_one

    dep = create(client, org, name="metered")
    wait_status(client, dep["id"], org.headers, ("running",))
    time.sleep(1.2)
    reconcile_one(dep["id"])
    body = client.get(f"/v1/deployments/{dep['id']}", headers=org.headers).json()
    assert body["gpu_seconds"] >= 1.0
    usage = client.get("/v1/usage", headers=org.headers)
    assert usage.status_code == 200
    assert usage.json()["gpu_seconds"]["used"] >= 1
    # Billing meters the same durable counter, in the reconcile's transaction, once per interval.
    from billing.service import period_totals
    from store.db import session_scope

    with session_scope() as session:
        metered = period_totals(session, org.org_id)["gpu_seconds"].quantity
    assert metered == usage.json()["gpu_seconds"]["used"]


@pytest.fixture
def unhealthy_backend(stub_backend: Any, tmp_path: Path) -> Iterator[Any]:
    """Replicas that start but never pass the health check."""
    from tests.deployments.conftest import STUB, install_backend

    backend = install_backend(
        tmp_path / "unhealthy",
        [sys.executable, STUB, "--port", "{port}", "--name", "{name}", "--unhealthy"],
    )
    yield backend
    backend.sweep_orphans(set())


def test_a_rollout_past_its_deadline_fails_the_job(
    client: Any, org: Any, unhealthy_backend: Any, deploy_settings: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(deploy_settings, "deploy_rollout_deadline_seconds", 1.5)
    dep = create(client, org, name="never-ready")
    job = wait_for_job(client, dep["links"]["job"].rsplit("/", 1)[1], org.headers)
    assert job["status"] == "failed" and job["error"]["code"] == "rollout_timeout"
    failed = wait_status(client, dep["id"], org.headers, ("failed",))
    assert failed["status_reason"].startswith("rollout_timeout")
    assert "answered 500" in failed["status_reason"]
    assert pids_of(dep["id"]) == []  # the never-ready replica was stopped, not left running
    assert unhealthy_backend.sweep_orphans(set()) == []


def test_a_cancelled_rollout_does_not_stay_deploying_forever(
    client: Any, org: Any, unhealthy_backend: Any, deploy_settings: Any, monkeypatch: Any
) -> None:
    from deployments.jobs import reconcile_one

    monkeypatch.setattr(deploy_settings, "deploy_rollout_deadline_seconds", 2.0)
    dep = create(client, org, name="cancelled")
    job_id = dep["links"]["job"].rsplit("/", 1)[1]
    wait_status(client, dep["id"], org.headers, ("deploying",))
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=org.headers).status_code == 200
    assert wait_for_job(client, job_id, org.headers)["status"] == "cancelled"
    reconcile_one(dep["id"])
    assert client.get(f"/v1/deployments/{dep['id']}", headers=org.headers).json()["status"] == (
        "deploying"
    )
    time.sleep(2.1)
    reconcile_one(dep["id"])
    failed = client.get(f"/v1/deployments/{dep['id']}", headers=org.headers).json()
    assert failed["status"] == "failed" and failed["status_reason"].startswith("rollout_timeout")


def test_templates_list_the_configured_catalogue(client: Any, org: Any) -> None:
    response = client.get("/v1/models/templates", headers=org.headers)
    assert response.status_code == 200
    templates = {t["name"]: t for t in response.json()}
    assert set(templates) == {"tiny", "tiny-b"}
    assert templates["tiny"]["runtime"] == "transformers"
    assert templates["tiny"]["default_gpu_count"] == 0
    assert client.get("/v1/models/templates").status_code == 401


def test_proxied_completions_keep_the_contract(client: Any, org: Any) -> None:
    """The proxy's fast path checks the key on every request (revocation is immediate),
    validates the body like the route, spreads requests over replicas, and leaves everything
    that is not a deployment's request to the routes."""
    dep = create(client, org, name="gate", replicas={"min": 2, "max": 2})
    wait_status(client, dep["id"], org.headers, ("running",))
    key = client.post("/v1/keys", json={"name": "proxy"}, headers=org.headers).json()
    headers = {"Authorization": f"Bearer {key['key']}"}
    chat = {"model": "gate", "messages": [{"role": "user", "content": "hi"}]}

    answers = [client.post("/v1/chat/completions", json=chat, headers=headers) for _ in range(4)]
    assert all(a.status_code == 200 for a in answers), answers[0].text
    assert answers[0].headers["X-RateLimit-Limit"] and answers[0].headers["X-Request-ID"]
    assert len({a.json()["choices"][0]["message"]["content"] for a in answers}) == 2
    completion = client.post(
        "/v1/completions", json={"model": "gate", "prompt": "hi"}, headers=headers
    )
    assert completion.status_code == 200 and completion.json()["choices"][0]["text"]
    with_query = client.post("/v1/chat/completions?async=false", json=chat, headers=headers)
    assert with_query.status_code == 200  # the route proxies too

    invalid = client.post(
        "/v1/chat/completions", json={"model": "gate", "messages": "hi"}, headers=headers
    )
    assert invalid.status_code == 422
    assert invalid.json()["error"]["code"] == "validation_error"
    malformed = client.post(
        "/v1/chat/completions",
        content=b'{"model": "gate",',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert malformed.status_code == 400
    unknown = client.post(
        "/v1/chat/completions", json={**chat, "model": "no-such-model"}, headers=headers
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    bad_key = client.post(
        "/v1/chat/completions", json=chat, headers={"Authorization": "Bearer cvy_live_nope"}
    )
    assert bad_key.status_code == 401

    assert client.delete(f"/v1/keys/{key['id']}", headers=org.headers).status_code == 204
    revoked = client.post("/v1/chat/completions", json=chat, headers=headers)
    assert revoked.status_code == 401  # on the very next request
    assert revoked.json()["error"]["code"] == "unauthorized"
