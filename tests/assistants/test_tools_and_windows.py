"""Tools (OpenAI format) offered to the model and its calls surfaced to the client, answered with
``tool_result``; deployment-backed instances trimmed to their model's context window."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from websockets.asyncio.client import connect

from inference.testing import Stack, free_port
from tests.assistants.conftest import add_deployment, create_instance
from tests.assistants.test_websocket import frames_until_done, ws_url
from tests.conftest import OrgKey

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "tooled",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [],
        "usage": usage,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class ToolModel:
    """An OpenAI-compatible replica (a real HTTP server) whose model calls ``get_weather``
    first (the call streamed in fragments, as OpenAI streams it), then answers from the
    tool's result. It keeps the requests it got."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def chat(self, request: Request) -> StreamingResponse:
        body = await request.json()
        self.requests.append(body)
        answered = body["messages"][-1]["role"] == "tool"

        async def stream() -> AsyncIterator[bytes]:
            if answered:
                yield _chunk({"role": "assistant", "content": "It is "})
                yield _chunk({"content": body["messages"][-1]["content"] + "."}, "stop")
            else:
                call = {"index": 0, "id": "call_w1", "type": "function"}
                yield _chunk(
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {**call, "function": {"name": "get_weather", "arguments": ""}}
                        ],
                    }
                )
                for part in ('{"city": ', '"Paris"}'):
                    yield _chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                yield _chunk({}, "tool_calls")
            yield _chunk(
                {}, usage={"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
            )
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    def __enter__(self) -> ToolModel:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def tool_model() -> Iterator[ToolModel]:
    with ToolModel() as model:
        yield model


def test_tool_calls_reach_the_client_and_its_results_the_model(
    api: httpx.Client, stack: Stack, tenant: OrgKey, tool_model: ToolModel
) -> None:
    add_deployment(tenant, "tooled", endpoints=[tool_model.url])
    instance = create_instance(api, model="tooled", tools=[WEATHER], system_prompt="Be brief.")
    assert instance["tools"] == [WEATHER]

    async def talk() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        async with connect(ws_url(stack, instance["id"], tenant.key)) as ws:
            await ws.send(json.dumps({"type": "message", "id": "m1", "content": "Paris?"}))
            first = await frames_until_done(ws, {"m1"})
            conversation = first[-1]["conversation_id"]
            await ws.send(
                json.dumps(
                    {
                        "type": "tool_result",
                        "id": "bad",
                        "conversation_id": conversation,
                        "tool_call_id": "call_nope",
                        "content": "x",
                    }
                )
            )
            refused = (await frames_until_done(ws, {"bad"}))[-1]
            await ws.send(
                json.dumps(
                    {
                        "type": "tool_result",
                        "id": "m2",
                        "conversation_id": conversation,
                        "tool_call_id": "call_w1",
                        "content": "sunny",
                    }
                )
            )
            return first, await frames_until_done(ws, {"m2"}), refused

    first, second, refused = asyncio.run(talk())
    call = {
        "id": "call_w1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    assert [f["type"] for f in first] == ["start", "tool_call", "done"], first
    assert first[1] == {"type": "tool_call", "id": "m1", "tool_call": call}
    assert first[-1]["message"]["tool_calls"] == [call]
    assert refused["type"] == "error" and refused["code"] == "validation_error"
    assert "".join(f.get("content", "") for f in second if f["type"] == "delta") == "It is sunny."
    assert second[-1]["message"]["content"] == "It is sunny."

    # The model was offered the tools, and saw its call and the tool's answer the second time.
    assert [r["tools"] for r in tool_model.requests] == [[WEATHER], [WEATHER]]
    followed = tool_model.requests[-1]["messages"]
    assert followed[0] == {"role": "system", "content": "Be brief."}
    assert followed[-2]["role"] == "assistant" and followed[-2]["tool_calls"] == [call]
    assert followed[-1] == {"role": "tool", "content": "sunny", "tool_call_id": "call_w1"}
    # Over HTTP: the stored conversation holds the call and the result.
    messages = api.get(
        f"/v1/instances/{instance['id']}/conversations/{first[-1]['conversation_id']}/messages",
        params={"sort": "created_at"},
    ).json()["data"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[2]["tool_call_id"] == "call_w1"


def test_tools_are_rendered_into_the_served_models_prompt(api: httpx.Client) -> None:
    plain = create_instance(api, model="slow")  # the 1,024-token window: room for the tools
    tooled = create_instance(api, model="slow", tools=[WEATHER])
    usage = [
        api.post(f"/v1/instances/{i['id']}/chat", json={"message": "Weather?"}).json()["usage"]
        for i in (plain, tooled)
    ]
    assert usage[1]["prompt_tokens"] > usage[0]["prompt_tokens"] + 20  # the definitions
    bad = api.post(
        "/v1/instances",
        json={
            "name": "x",
            "model": "tiny",
            "tools": [{"type": "function", "function": {"name": "no spaces allowed"}}],
        },
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    # A tool result needs a conversation whose reply made that call.
    refused = api.post(
        f"/v1/instances/{plain['id']}/chat", json={"message": "42", "tool_call_id": "call_x"}
    )
    assert refused.status_code == 422


@pytest.mark.parametrize("model_dir", ["readable", "unreadable"])
def test_deployment_backed_history_is_trimmed_to_the_window(
    api: httpx.Client, stack: Stack, tenant: OrgKey, replica: str, model_dir: str
) -> None:
    """The replica serves the tiny model (a 256-token window). A worker that can read the
    model directory counts with its tokenizer; otherwise it takes the replica's
    ``max_model_len`` and the documented estimate."""
    tiny = stack.env["CONVEYOR_MODELS"].split(",")[0].split("=", 1)[1]
    path = tiny if model_dir == "readable" else "/models/not-here"
    add_deployment(tenant, "my-llm", endpoints=[replica], model_path=path)
    instance = create_instance(api, model="my-llm", max_tokens=8, system_prompt="Be brief.")
    long = "the quick brown fox jumps over the lazy dog " * 12  # ~110 tokens, 530 characters
    answers = []
    conversation = None
    for _ in range(3):
        body: dict[str, Any] = {"message": long}
        if conversation:
            body["conversation_id"] = conversation
        answer = api.post(f"/v1/instances/{instance['id']}/chat", json=body)
        assert answer.status_code == 200, answer.text  # the replica never saw an over-long prompt
        answers.append(answer.json())
        conversation = answers[-1]["conversation_id"]
    assert answers[0]["dropped_turns"] == 0
    assert answers[-1]["dropped_turns"] >= 2
    assert answers[-1]["usage"]["prompt_tokens"] + 8 <= 256
