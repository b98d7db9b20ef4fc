"""Tool calling on Conveyor's own engines: definitions reach the prompt, ``<tool_call>`` text
becomes OpenAI ``tool_calls`` (whole and streamed), bad definitions are refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from inference import service
from inference.engines.base import ChatEngine, GenerationEvent, GenerationRequest, TextDelta, Usage
from inference.engines.transformers_engine import TransformersEngine
from inference.registry import ModelPool
from inference.schemas import ChatCompletionRequest
from inference.tools import ToolCallStream, split_tool_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def test_split_keeps_text_and_turns_calls_into_openai_tool_calls() -> None:
    content, calls = split_tool_calls(f"Let me look. {CALL}")
    assert content == "Let me look. "
    assert [c["function"] for c in calls] == [
        {"name": "get_weather", "arguments": json.dumps({"city": "Paris"}, separators=(",", ":"))}
    ]
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    # Not a call (no name, or not JSON): left as text.
    assert split_tool_calls("<tool_call>oops</tool_call>") == ("<tool_call>oops</tool_call>", [])


def test_streamed_calls_are_held_back_until_decided() -> None:
    stream = ToolCallStream()
    shown = "".join(
        stream.feed(piece)
        for piece in [
            "Sure <tool",
            '_call>{"name": "get_w',
            'eather", "arguments": {}}</tool_call> ok <to',
        ]
    )
    assert shown == "Sure  ok "
    assert stream.finish() == "<to"  # an unfinished opening stays text
    assert [c["function"]["name"] for c in stream.new_calls()] == ["get_weather"]
    assert stream.new_calls() == []


def test_definitions_are_validated() -> None:
    ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]}
    )
    for bad in ({"type": "function", "function": {"name": "has space"}}, {"type": "retrieval"}):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate(
                {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [bad]}
            )


def test_tools_reach_the_tiny_models_prompt(tiny_engine: TransformersEngine) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    plain = tiny_engine.render_chat(messages)
    offered = tiny_engine.render_chat(messages, [WEATHER])
    assert "get_weather" not in plain
    assert "get_weather" in offered and "Be brief." in offered and "<tool_call>" in offered
    # An assistant's earlier call and the tool's answer are part of the next prompt.
    follow_up = tiny_engine.render_chat(
        [
            *messages,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        ],
        [WEATHER],
    )
    assert '"city": "Paris"' in follow_up and "sunny" in follow_up


class _Scripted(ChatEngine):
    """An engine whose model 'writes' a fixed text (the service's parsing is under test)."""

    def __init__(self, text: str) -> None:
        super().__init__("scripted")
        self.text = text
        self.prompts: list[str] = []

    @property
    def context_length(self) -> int:
        return 1024

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        return json.dumps({"messages": list(messages), "tools": list(tools or [])})

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self.prompts.append(request.prompt)
        pieces = [self.text[i : i + 7] for i in range(0, len(self.text), 7)]
        for piece in pieces[:-1]:
            yield TextDelta(index=0, text=piece)
        yield TextDelta(index=0, text=pieces[-1], finish_reason="stop")
        yield Usage(3, len(pieces))


def test_chat_completion_returns_tool_calls_whole_and_streamed() -> None:
    engine = _Scripted(f"Checking. {CALL}")
    pool = ModelPool([engine])
    body = {"model": "scripted", "messages": [{"role": "user", "content": "Weather?"}]}
    with_tools = ChatCompletionRequest.model_validate({**body, "tools": [WEATHER]})

    whole = asyncio.run(service.chat_completion(pool, with_tools))
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking. "
    assert (
        choice.message.tool_calls
        and choice.message.tool_calls[0]["function"]["name"] == "get_weather"
    )
    assert json.loads(engine.prompts[-1])["tools"] == [WEATHER]

    async def streamed() -> list[dict[str, Any]]:
        chunks = await service.chat_completion_stream(pool, with_tools)
        return [c.model_dump() async for c in chunks]

    chunks = asyncio.run(streamed())
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert text == "Checking. "
    calls = [d for c in chunks for d in c["choices"][0]["delta"]["tool_calls"] or []]
    assert [(d["index"], d["function"]["name"]) for d in calls] == [(0, "get_weather")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    # tool_choice "none": nothing offered, the text stays text.
    none = ChatCompletionRequest.model_validate({**body, "tools": [WEATHER], "tool_choice": "none"})
    plain = asyncio.run(service.chat_completion(pool, none))
    assert plain.choices[0].finish_reason == "stop" and plain.choices[0].message.tool_calls is None
    assert json.loads(engine.prompts[-1])["tools"] == []
