"""Tool calling (OpenAI ``tools`` format) on the engines Conveyor runs itself.

The definitions reach the model through its chat template when the template takes ``tools``
(Hugging Face's ``apply_chat_template(tools=…)``, e.g. Qwen, Llama 3.1, Hermes); otherwise they
are written into the system message with the calling convention below. A model calls a tool by
writing ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` (the Hermes convention those
templates use); :func:`split_tool_calls` and :class:`ToolCallStream` turn that text into OpenAI
``tool_calls`` (``finish_reason: "tool_calls"``), whole or while streaming.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(default=None, max_length=4_000)
    parameters: dict[str, Any] | None = Field(
        default=None, description="A JSON Schema object describing the arguments."
    )
    strict: bool | None = None


class ToolDefinition(BaseModel):
    """One entry of OpenAI's ``tools``: ``{"type": "function", "function": {name, …}}``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionDefinition


def tool_dicts(tools: Sequence[ToolDefinition] | None) -> list[dict[str, Any]]:
    return [t.model_dump(exclude_none=True) for t in tools or ()]


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def system_text(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tools and the calling convention, for a template that does not take ``tools``."""
    listed = "\n".join(json.dumps(dict(t), separators=(",", ":")) for t in tools)
    return (
        f"Tools:\n<tools>\n{listed}\n</tools>\n"
        f'Call one as {OPEN}{{"name": …, "arguments": {{…}}}}{CLOSE}.'
    )


def render_messages(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """Messages for a template without tool support: the tools go into the system message and
    an assistant's earlier calls are written back in the calling convention."""
    rendered: list[dict[str, Any]] = []
    for message in messages:
        content = str(message.get("content") or "")
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            arguments = function.get("arguments") or "{}"
            body = {"name": function.get("name"), "arguments": json.loads(arguments)}
            content += f"{OPEN}{json.dumps(body)}{CLOSE}"
        rendered.append({"role": str(message["role"]), "content": content})
    if tools:
        text = system_text(tools)
        if rendered and rendered[0]["role"] == "system":
            rendered[0] = {"role": "system", "content": f"{rendered[0]['content']}\n\n{text}"}
        else:
            rendered.insert(0, {"role": "system", "content": text})
    return rendered


def apply_template(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
) -> str:
    """The prompt: the tokenizer's chat template (given ``tools`` when it uses them)."""
    template = str(getattr(tokenizer, "chat_template", "") or "")
    if tools and "tools" in template:
        return str(
            tokenizer.apply_chat_template(
                [dict(m) for m in messages],
                tools=[dict(t) for t in tools],
                tokenize=False,
                add_generation_prompt=True,
            )
        )
    return str(
        tokenizer.apply_chat_template(
            render_messages(messages, tools), tokenize=False, add_generation_prompt=True
        )
    )


def _call(raw: str) -> dict[str, Any] | None:
    """One ``<tool_call>`` body as an OpenAI tool call; None when it is not a call."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return None
    arguments = body.get("arguments", body.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, separators=(",", ":"))
    return {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": body["name"], "arguments": arguments},
    }


def split_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """The text without its well-formed ``<tool_call>`` blocks, and those calls."""
    stream = ToolCallStream()
    content = stream.feed(text) + stream.finish()
    return content, stream.calls


@dataclass
class ToolCallStream:
    """Separates streamed text from tool calls: ``feed`` returns the text that can be shown
    now (a possible ``<tool_call>`` opening is held back until it is decided), ``finish`` the
    rest; complete calls collect in ``calls`` (and ``new_calls`` since the last look)."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    _buffer: str = ""
    _taken: int = 0

    def new_calls(self) -> list[dict[str, Any]]:
        fresh = self.calls[self._taken :]
        self._taken = len(self.calls)
        return fresh

    def feed(self, text: str) -> str:
        self._buffer += text
        shown: list[str] = []
        while self._buffer:
            start = self._buffer.find(OPEN)
            if start < 0:
                keep = _open_prefix(self._buffer)
                shown.append(self._buffer[: len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep :]
                break
            shown.append(self._buffer[:start])
            end = self._buffer.find(CLOSE, start)
            if end < 0:
                self._buffer = self._buffer[start:]
                break
            raw = self._buffer[start + len(OPEN) : end]
            call = _call(raw.strip())
            if call is None:
                shown.append(self._buffer[start : end + len(CLOSE)])
            else:
                self.calls.append(call)
            self._buffer = self._buffer[end + len(CLOSE) :]
        return "".join(shown)

    def finish(self) -> str:
        """The text still held back (an unfinished call stays text)."""
        rest, self._buffer = self._buffer, ""
        return rest


def _open_prefix(text: str) -> int:
    """Length of the longest tail of ``text`` that could begin ``<tool_call>``."""
    for k in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:k]):
            return k
    return 0


def merge_deltas(calls: dict[int, dict[str, Any]], deltas: Sequence[Mapping[str, Any]]) -> None:
    """Accumulate streamed ``delta.tool_calls`` (OpenAI: keyed by ``index``; ``id``, ``type``
    and the name come once, ``arguments`` in fragments) into whole calls by index."""
    for delta in deltas:
        found = calls.setdefault(
            int(delta.get("index", len(calls))),
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if delta.get("id"):
            found["id"] = delta["id"]
        function = delta.get("function") or {}
        if function.get("name"):
            found["function"]["name"] = function["name"]
        found["function"]["arguments"] += function.get("arguments") or ""


def merged(calls: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The accumulated calls in order (a call that came without an id gets one)."""
    ordered = [calls[i] for i in sorted(calls)]
    for call in ordered:
        call["id"] = call["id"] or new_call_id()
    return ordered
