"""Instances and HTTP chat against a real API and a real inference worker (the tiny model)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from inference.testing import Stack
from tests.assistants.conftest import billed_tokens, create_instance
from tests.conftest import OrgKey

pytestmark = pytest.mark.e2e

SENTENCE = "The quick brown fox jumps over the lazy dog. "


def test_instance_crud_and_unknown_model(api: httpx.Client) -> None:
    created = create_instance(api, name="support", plan="starter", system_prompt="Be brief.")
    assert created["webhook_secret"].startswith("whsec_")
    assert created["backend"] == "inference"
    assert created["limits"] == {"requests_per_minute": 300, "concurrent_sockets": 3}
    fetched = api.get(f"/v1/instances/{created['id']}").json()
    assert "webhook_secret" not in fetched
    patched = api.patch(f"/v1/instances/{created['id']}", json={"plan": "pro", "temperature": 0.5})
    assert patched.status_code == 200
    assert patched.json()["limits"]["requests_per_minute"] == 1000
    listed = api.get("/v1/instances").json()
    assert [i["id"] for i in listed["data"]] == [created["id"]]

    missing = api.post("/v1/instances", json={"name": "x", "model": "no-such-model"})
    assert missing.status_code == 422
    error = missing.json()["error"]
    assert error["code"] == "model_not_found"
    assert "tiny" in error["details"]["served"] and "tiny" in error["message"]
    embedding = api.post("/v1/instances", json={"name": "x", "model": "all-MiniLM-L6-v2"})
    assert embedding.status_code == 422

    assert api.delete(f"/v1/instances/{created['id']}").status_code == 204
    assert api.get(f"/v1/instances/{created['id']}").status_code == 404


def test_chat_keeps_history_and_counts_usage_once(api: httpx.Client, tenant: OrgKey) -> None:
    instance = create_instance(api, system_prompt="You are terse.")
    first = api.post(f"/v1/instances/{instance['id']}/chat", json={"message": "Hello world!"})
    assert first.status_code == 200, first.text
    one = first.json()
    assert one["message"]["role"] == "assistant"
    assert one["usage"]["completion_tokens"] > 0
    assert one["dropped_turns"] == 0
    second = api.post(
        f"/v1/instances/{instance['id']}/chat",
        json={"message": "What is the answer?", "conversation_id": one["conversation_id"]},
    ).json()
    assert second["conversation_id"] == one["conversation_id"]
    # The second prompt holds the first exchange: more tokens than the first prompt and reply.
    assert second["usage"]["prompt_tokens"] > (
        one["usage"]["prompt_tokens"] + one["usage"]["completion_tokens"]
    )
    messages = api.get(
        f"/v1/instances/{instance['id']}/conversations/{one['conversation_id']}/messages",
        params={"sort": "created_at"},
    ).json()["data"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == one["message"]["content"]
    assert messages[3]["id"] == second["message"]["id"]

    conversations = api.get(f"/v1/instances/{instance['id']}/conversations").json()["data"]
    assert [c["id"] for c in conversations] == [one["conversation_id"]]

    usage = api.get("/v1/usage").json()["assistants"]
    assert usage == [
        {
            "instance_id": instance["id"],
            "name": instance["name"],
            "prompt_tokens": one["usage"]["prompt_tokens"] + second["usage"]["prompt_tokens"],
            "completion_tokens": one["usage"]["completion_tokens"]
            + second["usage"]["completion_tokens"],
            "total_tokens": one["usage"]["total_tokens"] + second["usage"]["total_tokens"],
        }
    ]

    # Billing meters the same tokens, once, under the instance's model.
    prompt = one["usage"]["prompt_tokens"] + second["usage"]["prompt_tokens"]
    completion = one["usage"]["completion_tokens"] + second["usage"]["completion_tokens"]
    assert billed_tokens(tenant.org_id, (prompt, completion)) == {
        "tokens_in:tiny": prompt,
        "tokens_out:tiny": completion,
    }

    deleted = api.delete(f"/v1/instances/{instance['id']}/conversations/{one['conversation_id']}")
    assert deleted.status_code == 204
    gone = api.get(
        f"/v1/instances/{instance['id']}/conversations/{one['conversation_id']}/messages"
    )
    assert gone.status_code == 404


def test_history_is_trimmed_to_the_context_window(api: httpx.Client) -> None:
    # The tiny model's window is 256 tokens: long turns push the oldest out, never the system.
    instance = create_instance(api, system_prompt="Keep this system prompt.")
    conversation: str | None = None
    dropped: list[int] = []
    for _ in range(4):
        body: dict[str, Any] = {"message": SENTENCE * 8}
        if conversation:
            body["conversation_id"] = conversation
        answer = api.post(f"/v1/instances/{instance['id']}/chat", json=body).json()
        conversation = answer["conversation_id"]
        dropped.append(answer["dropped_turns"])
        assert answer["usage"]["prompt_tokens"] <= 256 - 8
    assert dropped[0] == 0
    assert dropped[-1] > 0


def test_chat_streams_sse(api: httpx.Client) -> None:
    instance = create_instance(api, max_tokens=12)
    frames: list[dict[str, Any]] = []
    with api.stream(
        "POST", f"/v1/instances/{instance['id']}/chat", json={"message": "Hi", "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                frames.append(json.loads(line[6:]))
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("delta") >= 1
    done = frames[-1]
    text = "".join(f["content"] for f in frames if f["type"] == "delta")
    assert done["message"]["content"] == text
    assert 1 <= done["usage"]["completion_tokens"] <= 12  # may stop early on end-of-text


def test_other_org_cannot_see_an_instance(api: httpx.Client, stack: Stack) -> None:
    from tests.conftest import make_org

    instance = create_instance(api)
    other: OrgKey = make_org()
    headers = {"Authorization": f"Bearer {other.key}"}
    for method, path in (
        ("GET", f"/v1/instances/{instance['id']}"),
        ("POST", f"/v1/instances/{instance['id']}/chat"),
        ("GET", f"/v1/instances/{instance['id']}/logs"),
    ):
        response = httpx.request(
            method, stack.url + path, headers=headers, json={"message": "hi"}, timeout=30
        )
        assert response.status_code == 404, (path, response.text)


def test_logs_record_chats_without_contents_unless_asked(api: httpx.Client) -> None:
    quiet = create_instance(api)
    loud = create_instance(api, log_content=True)
    for instance in (quiet, loud):
        assert (
            api.post(f"/v1/instances/{instance['id']}/chat", json={"message": "secret"}).status_code
            == 200
        )
    quiet_logs = api.get(f"/v1/instances/{quiet['id']}/logs").json()["data"]
    loud_logs = api.get(f"/v1/instances/{loud['id']}/logs", params={"tail": 5}).json()["data"]
    assert [line["kind"] for line in quiet_logs] == ["chat"]
    assert "reply" not in quiet_logs[0]["data"]
    assert quiet_logs[0]["data"]["usage"]["completion_tokens"] > 0
    assert "reply" in loud_logs[0]["data"]

    # stream=true: the tail as SSE, then lines as they are written.
    with api.stream(
        "GET", f"/v1/instances/{quiet['id']}/logs", params={"stream": "true", "tail": 1}
    ) as response:
        lines = response.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        assert first["kind"] == "chat"
        api.post(f"/v1/instances/{quiet['id']}/chat", json={"message": "again"})
        second = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        assert second["kind"] == "chat" and second["id"] != first["id"]
