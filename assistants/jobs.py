"""The ``assistant`` job's work, on an inference worker: answer a conversation's last message.

History is read from the store and fitted to the model's context window (the oldest turns go
first, the system prompt stays); the request then runs through the inference path itself
(``inference.worker.execute``: this process's engines, the token relay, cancellation, the
organisation's usage). The reply is written, and the instance's tokens counted, before the relay's
final event, so a client that saw ``done`` finds the reply in the conversation. An instance on a
model deployment is answered by the deployment's replicas through ``deployments.proxy``, its
chunks relayed the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from assistants import repository, service
from assistants.schemas import ReplyJobInput
from common.errors import ConveyorError, NotFound
from config import get_settings
from inference import relay
from inference.engines.base import ChatEngine
from inference.jobs import usage_recorder
from inference.schemas import InferenceJobInput
from inference.service import Meter
from inference.worker import RUNTIME, InferenceRuntime, JobWasCancelled, execute
from jobs.context import JobCancelled, JobContext
from store.db import session_scope


@dataclass(frozen=True)
class Prompt:
    """What one reply is generated from (read from the store once, then no session is held)."""

    org_id: str
    model: str
    backend: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float | None


def _load(payload: ReplyJobInput) -> Prompt:
    with session_scope() as session:
        instance = repository.get_instance_any(session, payload.instance_id)
        if instance is None:
            raise NotFound("The instance was deleted.")
        history = [
            m
            for m in repository.history(session, payload.conversation_id)
            if m.id != payload.reply_id
        ]
        return Prompt(
            org_id=instance.org_id,
            model=instance.model,
            backend=instance.backend,
            messages=service.model_messages(instance, history),
            max_tokens=instance.max_tokens or get_settings().assistant_default_max_tokens,
            temperature=instance.temperature,
        )


def _token_counter(engine: ChatEngine) -> Any:
    count = getattr(engine, "count_tokens", None)

    def tokens(messages: list[dict[str, str]]) -> int:
        rendered = engine.render_chat(messages)
        return int(count(rendered)) if count is not None else len(rendered) // 4 + 1

    return tokens


def _fit(engine: ChatEngine, prompt: Prompt) -> tuple[list[dict[str, str]], int, int]:
    """The messages that fit the context window with room for the reply; the dropped turns;
    the reply's token budget (smaller than asked when the window is small)."""
    window = engine.context_length
    max_tokens = min(prompt.max_tokens, max(1, window // 2))
    messages, dropped = service.fit_context(
        prompt.messages, _token_counter(engine), window - max_tokens
    )
    return messages, dropped, max_tokens


def run_reply(ctx: JobContext) -> dict[str, Any]:
    """Generate and store the reply; the job's result is the reply (``service.reply_view``)."""
    payload = ReplyJobInput.model_validate(ctx.input)
    prompt = _load(payload)
    runtime = RUNTIME.get()
    try:
        if prompt.backend == "deployment":
            return runtime.run(_via_deployment(runtime, ctx, payload, prompt))
        return _via_inference(runtime, ctx, payload, prompt)
    except ConveyorError as exc:
        _log_error(payload, exc)
        raise


def _via_inference(
    runtime: InferenceRuntime, ctx: JobContext, payload: ReplyJobInput, prompt: Prompt
) -> dict[str, Any]:
    engine = runtime.pool.chat(prompt.model)
    messages, dropped, max_tokens = _fit(engine, prompt)
    body: dict[str, Any] = {
        "model": prompt.model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": payload.relay,
    }
    if prompt.temperature is not None:
        body["temperature"] = prompt.temperature
    request = InferenceJobInput(operation="chat.completions", body=body, relay=payload.relay)
    answer: dict[str, Any] = {}

    def store(result: dict[str, Any] | None, meter: Meter) -> None:
        result = result or {}
        if payload.relay:
            content = (result.get("texts") or [""])[0]
        else:
            content = result["choices"][0]["message"]["content"]
        answer.update(
            _store(ctx, payload, content, meter.prompt_tokens, meter.completion_tokens, dropped)
        )

    try:
        runtime.run(
            execute(runtime, ctx.job_id, request, ctx, usage_recorder(ctx), before_end=store)
        )
    except JobWasCancelled as exc:
        raise JobCancelled(ctx.job_id) from exc
    return answer


def _store(
    ctx: JobContext,
    payload: ReplyJobInput,
    content: str,
    prompt_tokens: int,
    completion_tokens: int,
    dropped: int,
) -> dict[str, Any]:
    with session_scope() as session:
        instance = repository.get_instance_any(session, payload.instance_id)
        if instance is None:
            raise NotFound("The instance was deleted.")
        reply = service.store_reply(
            session,
            instance,
            conversation_id=payload.conversation_id,
            reply_id=payload.reply_id,
            content=content,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            dropped_turns=dropped,
            job_id=ctx.job_id,
            source=payload.source,
        )
        view = service.reply_view(reply)
    view["message"]["created_at"] = view["message"]["created_at"].isoformat()
    return view


def _log_error(payload: ReplyJobInput, exc: ConveyorError) -> None:
    with session_scope() as session:
        instance = repository.get_instance_any(session, payload.instance_id)
        if instance is not None:
            service.log(
                session,
                instance,
                "error",
                f"{payload.source} reply failed: {exc.message}",
                {"code": str(exc.code), "conversation_id": payload.conversation_id},
            )


# --- deployments --------------------------------------------------------------------------------


async def _via_deployment(
    runtime: InferenceRuntime, ctx: JobContext, payload: ReplyJobInput, prompt: Prompt
) -> dict[str, Any]:
    """Stream the reply from the deployment's replicas, relaying its chunks as they come."""
    import asyncio

    from deployments import proxy

    endpoints = await asyncio.to_thread(service.deployment_endpoints, prompt.org_id, prompt.model)
    body: dict[str, Any] = {
        "model": prompt.model,
        "messages": prompt.messages,
        "max_tokens": prompt.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if prompt.temperature is not None:
        body["temperature"] = prompt.temperature
    try:
        upstream = await proxy.send(
            endpoints,
            "/v1/chat/completions",
            json.dumps(body).encode(),
            timeout=get_settings().deploy_proxy_timeout_seconds,
            finish=lambda *_: None,
        )
    except proxy.ReplicaUnreachable as exc:
        from common.errors import Unavailable

        raise Unavailable(
            f"Deployment {prompt.model!r} has no reachable replica right now; retry in 5 s.",
            headers={"Retry-After": "5"},
        ) from exc
    assert runtime.redis is not None
    redis = runtime.redis
    if payload.relay:
        await relay.publish(redis, ctx.job_id, "started")
    texts: list[str] = []
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    checked = time.monotonic()
    async for line in _sse_lines(upstream.stream()):
        chunk = json.loads(line)
        for choice in chunk.get("choices") or []:
            texts.append((choice.get("delta") or {}).get("content") or "")
        if chunk.get("usage"):
            usage = chunk["usage"]
        if payload.relay:
            await relay.publish(redis, ctx.job_id, "chunk", line)
        if time.monotonic() - checked > 0.5:
            checked = time.monotonic()
            if await asyncio.to_thread(ctx.cancelled) or await relay.cancel_requested(
                redis, ctx.job_id
            ):
                raise JobCancelled(ctx.job_id)
    answer = await asyncio.to_thread(
        _store,
        ctx,
        payload,
        "".join(texts),
        int(usage.get("prompt_tokens", 0)),
        int(usage.get("completion_tokens", 0)),
        0,
    )
    if payload.relay:
        await relay.publish(redis, ctx.job_id, "end")
    return answer


async def _sse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The JSON documents of an OpenAI SSE stream (``data: {...}``), up to ``[DONE]``."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            if data:
                yield data.decode()
