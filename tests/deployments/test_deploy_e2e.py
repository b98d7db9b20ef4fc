"""End to end on the local backend with the real model server (`python -m inference.server`)
serving a tiny model built here: deploy, chat with the `openai` client (streaming too), logs,
scale, SIGKILL a replica, stop (503), start, rollback, delete."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from tests.deployments.conftest import install_backend
from tests.deployments.test_deploy_api import logged_events, pids_of, wait_status

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900), pytest.mark.usefixtures("worker")]


@pytest.fixture
def real_backend(
    deploy_settings: Any, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    from deployments import runtime

    monkeypatch.setattr(deploy_settings, "models", f"tiny={tiny_model}")
    backend = install_backend(tmp_path, None)  # the default command: inference.server
    yield backend
    backend.sweep_orphans(set())
    runtime.reset_backend()


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_local_deployment_lifecycle_with_the_real_model_server(
    client: Any, org: Any, real_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from deployments.jobs import reconcile_all

    caplog.set_level(logging.INFO, logger="webhooks.events")
    created = client.post(
        "/v1/deployments",
        json={"name": "tiny-chat", "model": "tiny", "env": {"HF_TOKEN": "hf_e2esecretvalue42"}},
        headers=org.headers,
    )
    assert created.status_code == 202, created.text
    dep_id = created.json()["id"]
    running = wait_status(client, dep_id, org.headers, ("running", "failed"), timeout=180)
    assert running["status"] == "running", running
    assert running["runtime"] == "transformers"

    oai = openai.OpenAI(base_url="http://testserver/v1", api_key=org.key, http_client=client)
    reply = oai.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    assert reply.choices[0].message is not None
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    chunks = list(
        oai.chat.completions.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=4,
            stream=True,
        )
    )
    assert len(chunks) >= 2
    assert "tiny-chat" in [m.id for m in oai.models.list().data]

    logs = client.get(f"/v1/deployments/{dep_id}/logs?tail=100", headers=org.headers).json()
    assert any("POST /v1/chat/completions" in line for line in logs["lines"])
    with client.stream(
        "GET", f"/v1/deployments/{dep_id}/logs?follow=true&tail=5", headers=org.headers
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        first = next(line for line in stream.iter_lines() if line.startswith("data: "))
        assert "line" in json.loads(first[len("data: ") :])

    # Scale to two replicas: requests spread over both.
    client.patch(
        f"/v1/deployments/{dep_id}", json={"replicas": {"min": 2, "max": 2}}, headers=org.headers
    )
    two = wait_status(client, dep_id, org.headers, ("running",), timeout=180)
    assert two["ready_replicas"] == 2 and two["revision"] == 2
    time.sleep(1.1)
    for _ in range(6):
        oai.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=1
        )
    lines = client.get(f"/v1/deployments/{dep_id}/logs?tail=400", headers=org.headers).json()
    replicas_hit = {
        line.split("]")[0] for line in lines["lines"] if "POST /v1/chat/completions" in line
    }
    assert len(replicas_hit) >= 2

    # SIGKILL one replica: degraded, then running again after the reconciler restarts it.
    victim = pids_of(dep_id)[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(0.3)
    reconcile_all()
    assert client.get(f"/v1/deployments/{dep_id}", headers=org.headers).json()["status"] == (
        "degraded"
    )
    deadline = time.monotonic() + 180
    while (
        client.get(f"/v1/deployments/{dep_id}", headers=org.headers).json()["status"] != "running"
    ):
        assert time.monotonic() < deadline, "replica was not restarted"
        reconcile_all()
        time.sleep(0.5)

    # Stop: 503 with Retry-After. Start: running again.
    client.post(f"/v1/deployments/{dep_id}/stop", headers=org.headers)
    wait_status(client, dep_id, org.headers, ("stopped",), timeout=60)
    time.sleep(1.1)
    with pytest.raises(openai.APIStatusError) as stopped:
        oai.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=1
        )
    assert stopped.value.status_code == 503
    assert int(stopped.value.response.headers["Retry-After"]) > 0
    client.post(f"/v1/deployments/{dep_id}/start", headers=org.headers)
    wait_status(client, dep_id, org.headers, ("running",), timeout=180)

    # Rollback to revision 1 (one replica).
    client.post(f"/v1/deployments/{dep_id}/rollback", json={"revision": 1}, headers=org.headers)
    back = wait_status(client, dep_id, org.headers, ("running",), timeout=180)
    assert back["revision"] == 3 and back["ready_replicas"] == 1

    # Delete: no process left, port freed.
    state_pids = pids_of(dep_id)
    port = int(back["endpoint"].rsplit(":", 1)[1])
    client.delete(f"/v1/deployments/{dep_id}", headers=org.headers)
    wait_status(client, dep_id, org.headers, ("deleted",), timeout=60)
    left = {pid: psutil.Process(pid).status() for pid in state_pids if psutil.pid_exists(pid)}
    assert left == {}
    assert port_free(port)

    events = logged_events(caplog, dep_id)
    assert events == [
        "deployment.created",
        "deployment.running",
        "deployment.running",  # revision 2 (two replicas) rolled out
        "deployment.degraded",
        "deployment.running",
        "deployment.stopped",
        "deployment.running",
        "deployment.running",  # revision 3 (the rollback) rolled out
        "deployment.deleted",
    ]
