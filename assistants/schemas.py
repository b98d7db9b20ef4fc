"""Pydantic I/O of the assistants domain: instances, chats, incoming events, the reply job."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from inference.tools import ToolDefinition

Plan = Literal["hobby", "starter", "pro", "team"]
Source = Literal["chat", "websocket", "webhook"]

DEFAULT_MESSAGE_TEMPLATE = "Event {event}: {payload}"


class InstanceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    model: str = Field(min_length=1, max_length=200)
    plan: Plan | None = None
    system_prompt: str | None = Field(default=None, max_length=32_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    tools: list[ToolDefinition] = Field(
        default_factory=list,
        max_length=64,
        description="OpenAI-format function tools offered to the model; its calls come back "
        "as `tool_calls` (answer each with a `tool_call_id` message).",
    )
    message_template: str = Field(
        default=DEFAULT_MESSAGE_TEMPLATE,
        max_length=8_000,
        description="How an incoming webhook becomes a message: `{event}` and `{payload}` "
        "(the payload as JSON) are replaced.",
    )
    log_content: bool = False


class InstancePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    plan: Plan | None = None
    system_prompt: str | None = Field(default=None, max_length=32_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    tools: list[ToolDefinition] | None = Field(default=None, max_length=64)
    message_template: str | None = Field(default=None, max_length=8_000)
    log_content: bool | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=32_000)
    conversation_id: str | None = Field(default=None, max_length=40)
    stream: bool = False
    tool_call_id: str | None = Field(
        default=None,
        max_length=64,
        description="The message is the result of this tool call of the conversation's last "
        "reply (needs `conversation_id`); the model then goes on.",
    )


class IncomingEvent(BaseModel):
    """The body of ``POST /v1/webhooks/incoming/{instance_id}``."""

    model_config = ConfigDict(extra="ignore")

    event: str = Field(min_length=1, max_length=200)
    payload: Any = None


class ReplyJobInput(BaseModel):
    """The input of an ``assistant`` job: answer the conversation's last user message, writing
    the reply as message ``reply_id``. ``relay``: stream the tokens to the API
    (``inference.relay``). ``model``: the instance's model when the turn began (billing meters
    the reply's tokens under it)."""

    model_config = ConfigDict(extra="forbid")

    instance_id: str
    conversation_id: str
    reply_id: str
    source: Source = "chat"
    relay: bool = False
    model: str | None = None
