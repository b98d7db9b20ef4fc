"""Incoming webhooks (Standard Webhooks signatures, replays), the per-instance rate limit across
two API processes, and an instance whose deployment is stopped."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from inference.testing import Stack, free_port
from tests.assistants.conftest import billed_tokens, create_instance
from tests.conftest import OrgKey
from tests.helpers import ServiceProcess, wait_for_job
from webhooks.signing import signature_headers

pytestmark = pytest.mark.e2e


def signed(
    secret: str, body: dict[str, Any], msg_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    return raw, signature_headers(
        secret, msg_id or f"msg_{uuid.uuid4().hex}", int(time.time()), raw
    )


def test_incoming_webhook_runs_once(api: httpx.Client, stack: Stack) -> None:
    instance = create_instance(
        api, message_template="Event {event} happened: {payload}", log_content=True
    )
    url = f"{stack.url}/v1/webhooks/incoming/{instance['id']}"
    raw, headers = signed(instance["webhook_secret"], {"event": "order.paid", "payload": {"n": 7}})
    first = httpx.post(url, content=raw, headers=headers, timeout=30)
    assert first.status_code == 202, first.text
    job = first.json()
    assert job["kind"] == "assistant"
    done = wait_for_job(api, job["id"], {}, timeout=60)
    assert done["status"] == "completed", done
    result = api.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200, result.text
    reply = result.json()
    assert reply["message"]["role"] == "assistant" and reply["usage"]["completion_tokens"] > 0

    replay = httpx.post(url, content=raw, headers=headers, timeout=30)
    assert replay.status_code == 200
    assert replay.json()["id"] == job["id"]
    conversations = api.get(f"/v1/instances/{instance['id']}/conversations").json()["data"]
    assert len(conversations) == 1  # the replay did not run again
    messages = api.get(
        f"/v1/instances/{instance['id']}/conversations/{conversations[0]['id']}/messages",
        params={"sort": "created_at"},
    ).json()["data"]
    assert messages[0]["content"] == 'Event order.paid happened: {"n":7}'

    bad = dict(headers, **{"webhook-id": "msg_other", "webhook-signature": "v1,AAAA"})
    assert httpx.post(url, content=raw, headers=bad, timeout=30).status_code == 401
    assert httpx.post(url, content=raw, timeout=30).status_code == 401  # unsigned
    stale_raw, stale = signed(instance["webhook_secret"], {"event": "x"})
    stale["webhook-timestamp"] = str(int(time.time()) - 3600)
    assert httpx.post(url, content=stale_raw, headers=stale, timeout=30).status_code == 401
    unknown = f"{stack.url}/v1/webhooks/incoming/ins_0000000000000000"
    assert httpx.post(unknown, content=raw, headers=headers, timeout=30).status_code == 404

    by_token = httpx.post(
        url,
        params={"token": instance["webhook_secret"]},
        json={"event": "ping", "payload": None},
        timeout=30,
    )
    assert by_token.status_code == 202
    wrong = httpx.post(url, params={"token": "whsec_nope"}, json={"event": "ping"}, timeout=30)
    assert wrong.status_code == 401

    # Rotation: the old secret stops working, the new one (shown once) verifies.
    rotated = api.post(f"/v1/instances/{instance['id']}/webhook-secret").json()["webhook_secret"]
    old_raw, old = signed(instance["webhook_secret"], {"event": "after"})
    assert httpx.post(url, content=old_raw, headers=old, timeout=30).status_code == 401
    new_raw, new = signed(rotated, {"event": "after"})
    assert httpx.post(url, content=new_raw, headers=new, timeout=30).status_code == 202

    kinds = [
        line["kind"] for line in api.get(f"/v1/instances/{instance['id']}/logs").json()["data"]
    ]
    assert "webhook" in kinds and "chat" in kinds


@pytest.fixture
def second_api(stack: Stack, tmp_path: Any) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = ServiceProcess(cmd, env=stack.env, log=tmp_path / "api2.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.stop()


def test_rate_limit_holds_across_two_api_processes(
    api: httpx.Client, stack: Stack, tenant: OrgKey, second_api: str
) -> None:
    instance = create_instance(api, plan="hobby")  # 60 requests a minute
    headers = {"Authorization": f"Bearer {tenant.key}"}
    # A conversation that does not exist: each request is counted, then answers 404 (no job).
    body = {"message": "hi", "conversation_id": "conv_missing"}
    statuses = []
    with httpx.Client(headers=headers, timeout=30) as client:
        for i in range(60):
            base = stack.url if i % 2 else second_api
            statuses.append(client.post(f"{base}/v1/instances/{instance['id']}/chat", json=body))
        over = client.post(f"{stack.url}/v1/instances/{instance['id']}/chat", json=body)
        other_process = client.post(f"{second_api}/v1/instances/{instance['id']}/chat", json=body)
    assert {r.status_code for r in statuses} == {404}
    for response in (over, other_process):
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "rate_limited"
        assert int(response.headers["Retry-After"]) >= 1
        assert response.headers["X-RateLimit-Limit"] == "60"
        assert response.headers["X-RateLimit-Remaining"] == "0"


def test_stopped_deployment_answers_503_with_retry_after(api: httpx.Client, tenant: OrgKey) -> None:
    from deployments.models import Deployment
    from store.db import session_scope

    with session_scope() as session:
        session.add(
            Deployment(
                org_id=tenant.org_id,
                name="my-llm",
                model="tiny",
                model_path="/models/tiny",
                runtime="transformers",
                backend="local",
                desired="stopped",
                status="stopped",
            )
        )
    instance = create_instance(api, model="my-llm")
    assert instance["backend"] == "deployment"
    answer = api.post(f"/v1/instances/{instance['id']}/chat", json={"message": "hello"})
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "unavailable"
    assert int(answer.headers["Retry-After"]) > 0
    assert api.get(f"/v1/instances/{instance['id']}/conversations").json()["data"] == []
    logs = api.get(f"/v1/instances/{instance['id']}/logs").json()["data"]
    assert [(line["kind"], line["data"]["code"]) for line in logs] == [("error", "unavailable")]


def test_running_deployment_answers_through_its_replica(
    api: httpx.Client, tenant: OrgKey, replica: str
) -> None:
    from deployments.models import Deployment
    from store.db import session_scope

    with session_scope() as session:
        session.add(
            Deployment(
                org_id=tenant.org_id,
                name="my-llm",
                model="tiny",
                model_path="/models/tiny",
                runtime="transformers",
                backend="local",
                status="running",
                endpoints=[replica],
                ready_replicas=1,
            )
        )
    instance = create_instance(api, model="my-llm", max_tokens=10)
    frames: list[dict[str, Any]] = []
    with api.stream(
        "POST", f"/v1/instances/{instance['id']}/chat", json={"message": "Hi", "stream": True}
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                frames.append(json.loads(line[6:]))
    assert frames[0]["type"] == "start" and frames[-1]["type"] == "done", frames[-1]
    done = frames[-1]
    deltas = "".join(f["content"] for f in frames if f["type"] == "delta")
    assert done["message"]["content"] == deltas and deltas
    assert 1 <= done["usage"]["completion_tokens"] <= 10
    again = api.post(
        f"/v1/instances/{instance['id']}/chat",
        json={"message": "More", "conversation_id": done["conversation_id"]},
    ).json()
    assert again["usage"]["prompt_tokens"] > done["usage"]["total_tokens"]
    # The replica's usage is billed under the deployment's name, once per reply.
    prompt = done["usage"]["prompt_tokens"] + again["usage"]["prompt_tokens"]
    completion = done["usage"]["completion_tokens"] + again["usage"]["completion_tokens"]
    assert billed_tokens(tenant.org_id, (prompt, completion)) == {
        "tokens_in:my-llm": prompt,
        "tokens_out:my-llm": completion,
    }
