"""Scale to zero end to end with a real deploy worker and real replica processes: a deployment
with replicas.min 0 stops its last replica after the idle period (the reconciler), answers the
next request with 503 `unavailable` + Retry-After while one `scale_up` job starts a replica, and
serves again once it is ready. One with replicas.min 1 never scales down."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from tests.deployments.conftest import install_backend
from tests.deployments.test_deploy_api import create, logged_events, pids_of, wait_status

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600), pytest.mark.usefixtures("worker")]

IDLE_S = 3.0


@pytest.fixture
def idle_settings(deploy_settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(deploy_settings, "deploy_scale_to_zero_idle_seconds", IDLE_S)
    return deploy_settings


@pytest.fixture
def model_backend(
    idle_settings: Any, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Replicas are the real model server (`python -m inference.server`) on the tiny model."""
    from deployments import runtime

    monkeypatch.setattr(idle_settings, "models", f"tiny={tiny_model}")
    backend = install_backend(tmp_path, None)
    yield backend
    backend.sweep_orphans(set())
    runtime.reset_backend()


def job_of(body: dict[str, Any]) -> str:
    return str(body["links"]["job"]).rsplit("/", 1)[1]


def test_idle_deployment_scales_to_zero_and_the_next_request_wakes_it(
    client: Any, org: Any, model_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from deployments.jobs import reconcile_all, reconcile_one

    caplog.set_level(logging.INFO, logger="webhooks.events")
    dep = create(client, org, name="sleepy", replicas={"min": 0, "max": 1}, env={})
    dep_id = dep["id"]
    running = wait_status(client, dep_id, org.headers, ("running", "failed"), timeout=180)
    assert running["status"] == "running", running
    assert running["ready_replicas"] == 1 and running["scaled_to_zero"] is False

    oai = openai.OpenAI(base_url="http://testserver/v1", api_key=org.key, http_client=client)
    chat = {"model": "sleepy", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert oai.chat.completions.create(**chat).choices

    # Busy within the idle period: the reconciler keeps the replica.
    time.sleep(0.7)  # the API writes its request metrics (the idle clock) within 0.5 s
    reconcile_one(dep_id)
    assert (
        client.get(f"/v1/deployments/{dep_id}", headers=org.headers).json()["ready_replicas"] == 1
    )

    # Idle past the period: scaled to zero, status still truthful, no process left.
    replica_pids = pids_of(dep_id)
    time.sleep(IDLE_S + 0.3)
    reconcile_all()
    idle = client.get(f"/v1/deployments/{dep_id}", headers=org.headers).json()
    assert idle["status"] == "running", idle
    assert idle["ready_replicas"] == 0 and idle["scaled_to_zero"] is True
    assert idle["endpoint"] is None
    assert idle["status_reason"].startswith("scaled_to_zero:")
    assert all(not psutil.pid_exists(pid) for pid in replica_pids)
    metrics = client.get(f"/v1/deployments/{dep_id}/metrics", headers=org.headers).json()
    assert metrics["replicas_ready"] == 0 and metrics["replicas_desired"] == 0
    reconcile_all()  # a second pass leaves it asleep
    assert client.get(f"/v1/deployments/{dep_id}", headers=org.headers).json()["scaled_to_zero"]

    # The next request: 503 unavailable with Retry-After (never 404), and one scale_up job.
    first = client.post("/v1/chat/completions", json=chat, headers=org.headers)
    assert first.status_code == 503, first.text
    assert first.json()["error"]["code"] == "unavailable"
    assert first.json()["error"]["details"]["scaling_from_zero"] is True
    assert int(first.headers["Retry-After"]) > 0
    waking = client.get(f"/v1/deployments/{dep_id}", headers=org.headers).json()
    assert waking["status"] in ("deploying", "running") and waking["scaled_to_zero"] is False
    job_id = job_of(waking)
    job = client.get(f"/v1/jobs/{job_id}", headers=org.headers).json()
    assert job["kind"] == "deploy" and job["input"]["operation"] == "scale_up"
    second = client.post("/v1/chat/completions", json=chat, headers=org.headers)
    if second.status_code == 503:  # still starting: the same job, no second one
        assert job_of(client.get(f"/v1/deployments/{dep_id}", headers=org.headers).json()) == (
            job_id
        )

    # Once the replica is ready, requests succeed again.
    awake = wait_status(client, dep_id, org.headers, ("running",), timeout=180)
    assert awake["ready_replicas"] == 1 and awake["status_reason"] is None
    deadline = time.monotonic() + 30
    while True:
        reply = client.post("/v1/chat/completions", json=chat, headers=org.headers)
        if reply.status_code == 200:
            break
        assert reply.status_code == 503 and time.monotonic() < deadline, reply.text
        time.sleep(0.2)
    assert reply.headers["X-Conveyor-Deployment-Id"] == dep_id

    client.delete(f"/v1/deployments/{dep_id}", headers=org.headers)
    wait_status(client, dep_id, org.headers, ("deleted",), timeout=60)
    events = logged_events(caplog, dep_id)
    assert events == [
        "deployment.created",
        "deployment.running",
        "deployment.running",  # up again after the scale from zero
        "deployment.deleted",
    ]


@pytest.mark.usefixtures("stub_backend")
def test_a_deployment_with_min_replicas_never_scales_to_zero(
    client: Any, org: Any, idle_settings: Any
) -> None:
    from deployments.jobs import reconcile_all

    dep = create(client, org, name="steady", replicas={"min": 1, "max": 1})
    wait_status(client, dep["id"], org.headers, ("running",))
    time.sleep(IDLE_S + 0.3)
    reconcile_all()
    body = client.get(f"/v1/deployments/{dep['id']}", headers=org.headers).json()
    assert body["ready_replicas"] == 1 and body["scaled_to_zero"] is False
    chat = {"model": "steady", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=chat, headers=org.headers).status_code == 200


@pytest.mark.usefixtures("stub_backend")
def test_stop_and_start_of_a_deployment_scaled_to_zero(
    client: Any, org: Any, idle_settings: Any
) -> None:
    from deployments.jobs import reconcile_all

    dep = create(client, org, name="nap", replicas={"min": 0, "max": 1})
    dep_id = dep["id"]
    wait_status(client, dep_id, org.headers, ("running",))
    time.sleep(IDLE_S + 0.3)
    reconcile_all()
    assert client.get(f"/v1/deployments/{dep_id}", headers=org.headers).json()["scaled_to_zero"]

    client.post(f"/v1/deployments/{dep_id}/stop", headers=org.headers)
    stopped = wait_status(client, dep_id, org.headers, ("stopped",))
    assert stopped["scaled_to_zero"] is False
    chat = {"model": "nap", "messages": [{"role": "user", "content": "hi"}]}
    refused = client.post("/v1/chat/completions", json=chat, headers=org.headers)
    assert refused.status_code == 503 and refused.json()["error"]["details"]["status"] == "stopped"
    assert refused.json()["error"]["details"]["scaling_from_zero"] is False
    assert client.get(f"/v1/deployments/{dep_id}", headers=org.headers).json()["status"] == (
        "stopped"
    )  # a request never starts a stopped deployment

    client.post(f"/v1/deployments/{dep_id}/start", headers=org.headers)
    started = wait_status(client, dep_id, org.headers, ("running",))
    assert started["ready_replicas"] == 1  # an explicit start runs a replica at once
    assert client.post("/v1/chat/completions", json=chat, headers=org.headers).status_code == 200
