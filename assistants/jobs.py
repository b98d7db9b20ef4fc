"""The ``assistant`` job's work, on an inference worker: answer a conversation's last message.

History is read from the store and fitted to the model's context window (the oldest turns go
first, the system prompt stays); the request then runs through the inference path itself
(``inference.worker.execute``: this process's engines, the token relay, cancellation, the
organisation's usage). The reply is written, and the instance's tokens counted, before the relay's
final event, so a client that saw ``done`` finds the reply in the conversation. An instance on a
model deployment is answered by the deployment's replicas through ``deployments.proxy``, its
chunks relayed the same way, its history fitted to the deployment's window
(:func:`deployment_window`). The instance's ``tools`` are offered on every reply; the model's
calls are stored on the reply (``tool_calls``) and the client answers them with ``tool``
messages.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator, Callable
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
from inference.tools import apply_template, merge_deltas, merged
from inference.worker import RUNTIME, InferenceRuntime, JobWasCancelled, execute
from jobs.context import JobCancelled, JobContext
from store.db import session_scope

TokenCounter = Callable[[list[dict[str, Any]]], int]


@dataclass(frozen=True)
class Prompt:
    """What one reply is generated from (read from the store once, then no session is held)."""

    org_id: str
    model: str
    backend: str
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float | None
    tools: list[dict[str, Any]]


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
            tools=list(instance.tools or []),
        )


def _token_counter(engine: ChatEngine, tools: list[dict[str, Any]]) -> TokenCounter:
    count = getattr(engine, "count_tokens", None)

    def tokens(messages: list[dict[str, Any]]) -> int:
        rendered = engine.render_chat(messages, tools or None)
        return int(count(rendered)) if count is not None else len(rendered) // 4 + 1

    return tokens


def _fit(
    prompt: Prompt, window: int, count_tokens: TokenCounter
) -> tuple[list[dict[str, Any]], int, int]:
    """The messages that fit the context window with room for the reply; the dropped turns;
    the reply's token budget (smaller than asked when the window is small)."""
    max_tokens = min(prompt.max_tokens, max(1, window // 2))
    messages, dropped = service.fit_context(prompt.messages, count_tokens, window - max_tokens)
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
    messages, dropped, max_tokens = _fit(
        prompt, engine.context_length, _token_counter(engine, prompt.tools)
    )
    body = _request_body(prompt, messages, max_tokens, stream=payload.relay)
    request = InferenceJobInput(operation="chat.completions", body=body, relay=payload.relay)
    answer: dict[str, Any] = {}

    def store(result: dict[str, Any] | None, meter: Meter) -> None:
        result = result or {}
        if payload.relay:
            content = (result.get("texts") or [""])[0]
            calls = (result.get("tool_calls") or [[]])[0]
        else:
            message = result["choices"][0]["message"]
            content, calls = message["content"], message.get("tool_calls") or []
        reply = Reply(content, meter.prompt_tokens, meter.completion_tokens, dropped, calls)
        answer.update(_store(ctx, payload, reply))

    try:
        runtime.run(
            execute(runtime, ctx.job_id, request, ctx, usage_recorder(ctx), before_end=store)
        )
    except JobWasCancelled as exc:
        raise JobCancelled(ctx.job_id) from exc
    return answer


def _request_body(
    prompt: Prompt, messages: list[dict[str, Any]], max_tokens: int, *, stream: bool
) -> dict[str, Any]:
    """The OpenAI chat request of a reply (the instance's tools offered when it has any)."""
    body: dict[str, Any] = {
        "model": prompt.model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if prompt.temperature is not None:
        body["temperature"] = prompt.temperature
    if prompt.tools:
        body["tools"] = prompt.tools
    return body


@dataclass(frozen=True)
class Reply:
    content: str
    prompt_tokens: int
    completion_tokens: int
    dropped: int
    tool_calls: list[dict[str, Any]]


def _store(ctx: JobContext, payload: ReplyJobInput, answer: Reply) -> dict[str, Any]:
    with session_scope() as session:
        instance = repository.get_instance_any(session, payload.instance_id)
        if instance is None:
            raise NotFound("The instance was deleted.")
        reply = service.store_reply(
            session,
            instance,
            conversation_id=payload.conversation_id,
            reply_id=payload.reply_id,
            content=answer.content,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            dropped_turns=answer.dropped,
            job_id=ctx.job_id,
            source=payload.source,
            tool_calls=answer.tool_calls,
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

    replicas = await asyncio.to_thread(service.deployment_endpoints, prompt.org_id, prompt.model)
    window, count_tokens = await deployment_window(replicas, prompt)
    messages, dropped, max_tokens = _fit(prompt, window, count_tokens)
    body = _request_body(prompt, messages, max_tokens, stream=True)
    body["stream_options"] = {"include_usage": True}
    try:
        upstream = await proxy.send(
            replicas.endpoints,
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
    calls: dict[int, dict[str, Any]] = {}
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    checked = time.monotonic()
    async for line in _sse_lines(upstream.stream()):
        chunk = json.loads(line)
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            texts.append(delta.get("content") or "")
            merge_deltas(calls, delta.get("tool_calls") or [])
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
    reply = Reply(
        "".join(texts),
        int(usage.get("prompt_tokens", 0)),
        int(usage.get("completion_tokens", 0)),
        dropped,
        merged(calls),
    )
    # The replica's own usage, on the job (billing meters it once, with the job's terminal
    # transition); the replicas' GPU time is the deployment's, metered by the deployment.
    ctx.progress(
        usage_prompt_tokens=reply.prompt_tokens, usage_completion_tokens=reply.completion_tokens
    )
    answer = await asyncio.to_thread(_store, ctx, payload, reply)
    if payload.relay:
        await relay.publish(redis, ctx.job_id, "end")
    return answer


async def deployment_window(replicas: service.Replicas, prompt: Prompt) -> tuple[int, TokenCounter]:
    """A deployment's context window and how to count a prompt's tokens against it:

    1. the deployment's model directory, when this worker can read it: its tokenizer (the
       chat template and the tools rendered as the replica renders them) and its config's
       window (``max_position_embeddings``/``n_positions``, capped by the tokenizer's);
    2. else the window a replica reports in ``GET /v1/models`` (``max_model_len``, as vLLM and
       ``inference.server`` answer), counted by the documented estimate :func:`estimate_tokens`;
    3. else ``CONVEYOR_ASSISTANT_DEFAULT_CONTEXT_TOKENS`` (4096) with the same estimate.
    """
    import asyncio

    local = await asyncio.to_thread(_local_tokenizer, replicas.model_path)
    if local is not None:
        tokenizer, window = local

        def with_tokenizer(messages: list[dict[str, Any]]) -> int:
            text = apply_template(tokenizer, messages, prompt.tools or None)
            return len(tokenizer(text, add_special_tokens=True)["input_ids"])

        return window, with_tokenizer
    reported = await _reported_window(replicas.endpoints, prompt.model)
    window = reported or get_settings().assistant_default_context_tokens
    return window, lambda messages: estimate_tokens(messages, prompt.tools)


def estimate_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
    """Tokens of a prompt whose tokenizer is unknown: a token per 3 characters of content
    (rounded up; English averages about 4, so this errs on the side of dropping a turn) plus 8
    a message for the template's markers, and the tools' JSON at the same rate."""
    chars = sum(
        len(str(m.get("content") or "")) + len(json.dumps(m.get("tool_calls") or []))
        for m in messages
    )
    chars += len(json.dumps(tools)) if tools else 0
    return -(-chars // 3) + 8 * len(messages)


@functools.lru_cache(maxsize=32)
def _local_tokenizer(path: str) -> tuple[Any, int] | None:
    """A readable model directory's tokenizer and window (cached per path), else None."""
    from pathlib import Path

    directory = Path(path)
    if not (directory / "config.json").is_file():
        return None
    try:
        from transformers import AutoConfig, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except Exception:  # not a Hugging Face directory this worker can load: ask the replica
        return None
    limits = [
        int(v)
        for v in (
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 0),
            getattr(tokenizer, "model_max_length", 0),
        )
        if v and v < 10**9
    ]
    if not limits or not getattr(tokenizer, "chat_template", None):
        return None
    return tokenizer, min(limits)


_reported: dict[tuple[str, str], int | None] = {}


async def _reported_window(endpoints: list[str], model: str) -> int | None:
    """``max_model_len`` of ``model`` in a replica's ``GET /v1/models`` (remembered)."""
    import httpx

    for endpoint in endpoints:
        key = (endpoint, model)
        if key in _reported:
            return _reported[key]
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                cards = (await client.get(f"{endpoint}/v1/models")).json().get("data") or []
        except (httpx.HTTPError, ValueError):
            continue
        found = [c for c in cards if c.get("id") == model] or (cards if len(cards) == 1 else [])
        value = found[0].get("max_model_len") if found else None
        _reported[key] = int(value) if isinstance(value, int) and value > 0 else None
        return _reported[key]
    return None


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
