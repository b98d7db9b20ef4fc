"""OpenAI operations on top of the engines: chat, completions, embeddings, batch lines.

The standalone model server and the inference worker both call these functions, so the two
paths produce byte-for-byte the same response shapes. Usage is added to a ``Meter`` the caller
passes in (the worker records it per organisation).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from inference.engines.base import (
    ChatEngine,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    Usage,
    sampling_from,
)
from inference.errors import InferenceError, InvalidRequestError
from inference.registry import ModelPool
from inference.schemas import (
    BatchRequestLine,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessageOut,
    ChunkDelta,
    CompletionChoice,
    CompletionRequest,
    EmbeddingData,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    TextCompletion,
    UsageOut,
    encode_embedding,
    new_id,
    now,
)
from inference.tools import ToolCallStream, split_tool_calls


@dataclass
class Meter:
    """Token counts accumulated by one or more calls (for usage records)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    def add(self, usage: Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.requests += 1


def _usage_out(usage: Usage) -> UsageOut:
    return UsageOut(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def list_models(pool: ModelPool) -> ModelList:
    return ModelList(
        data=[
            ModelCard(
                id=e.name,
                kind=e.kind,
                max_model_len=e.context_length if isinstance(e, ChatEngine) else None,
            )
            for e in pool.engines()
        ]
    )


def _chat_request(
    engine: ChatEngine, req: ChatCompletionRequest, request_id: str
) -> GenerationRequest:
    if req.stop is not None and not isinstance(req.stop, str) and len(req.stop) > 4:
        raise InvalidRequestError("stop may hold at most 4 sequences.", param="stop")
    messages = [m.as_prompt() for m in req.messages]
    return GenerationRequest(
        request_id=request_id,
        prompt=engine.render_chat(messages, req.tool_list() or None),
        params=sampling_from(
            max_tokens=req.token_budget(),
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stops(),
            seed=req.seed,
            n=req.n,
        ),
    )


async def chat_completion(
    pool: ModelPool, req: ChatCompletionRequest, *, meter: Meter | None = None
) -> ChatCompletion:
    engine = pool.chat(req.model)
    response_id = new_id("chatcmpl")
    result = await engine.generate(_chat_request(engine, req, response_id))
    if meter is not None:
        meter.add(result.usage)
    offered = bool(req.tool_list())
    choices: list[ChatChoice] = []
    for i, (text, reason) in enumerate(zip(result.texts, result.finish_reasons, strict=True)):
        calls: list[dict[str, Any]] = []
        if offered:
            text, calls = split_tool_calls(text)
        choices.append(
            ChatChoice(
                index=i,
                message=ChatMessageOut(content=text, tool_calls=calls or None),
                finish_reason="tool_calls" if calls else reason,
            )
        )
    return ChatCompletion(
        id=response_id,
        created=now(),
        model=req.model,
        choices=choices,
        usage=_usage_out(result.usage),
    )


async def _primed(events: AsyncIterator[GenerationEvent]) -> AsyncIterator[GenerationEvent]:
    """Fetch the first event now, so admission errors raise before any chunk is sent."""
    first = await anext(events)

    async def rest() -> AsyncIterator[GenerationEvent]:
        try:
            yield first
            async for event in events:
                yield event
        finally:
            await _aclose(events)

    return rest()


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def chat_completion_stream(
    pool: ModelPool, req: ChatCompletionRequest, *, meter: Meter | None = None
) -> AsyncIterator[ChatCompletionChunk]:
    """Start a streaming chat completion; errors in the request raise here, before any chunk."""
    engine = pool.chat(req.model)
    response_id = new_id("chatcmpl")
    events = await _primed(engine.stream(_chat_request(engine, req, response_id)))
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    created = now()
    n = req.n or 1
    calls = {i: ToolCallStream() for i in range(n)} if req.tool_list() else {}

    def chunk(choices: list[ChatChunkChoice], usage: UsageOut | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=response_id, created=created, model=req.model, choices=choices, usage=usage
        )

    async def chunks() -> AsyncIterator[ChatCompletionChunk]:
        try:
            yield chunk(
                [
                    ChatChunkChoice(index=i, delta=ChunkDelta(role="assistant", content=""))
                    for i in range(n)
                ]
            )
            async for event in events:
                if isinstance(event, Usage):
                    if meter is not None:
                        meter.add(event)
                    if include_usage:
                        yield chunk([], _usage_out(event))
                    continue
                tools = calls.get(event.index)
                text = event.text if tools is None else tools.feed(event.text)
                if event.finish_reason is not None and tools is not None:
                    text += tools.finish()
                if text:
                    yield chunk(
                        [ChatChunkChoice(index=event.index, delta=ChunkDelta(content=text))]
                    )
                if event.finish_reason is not None:
                    found = tools.calls if tools is not None else []
                    if found:
                        delta = [{"index": k, **call} for k, call in enumerate(found)]
                        yield chunk(
                            [ChatChunkChoice(index=event.index, delta=ChunkDelta(tool_calls=delta))]
                        )
                    yield chunk(
                        [
                            ChatChunkChoice(
                                index=event.index,
                                delta=ChunkDelta(),
                                finish_reason="tool_calls" if found else event.finish_reason,
                            )
                        ]
                    )
        finally:
            await _aclose(events)

    return chunks()


def _completion_requests(req: CompletionRequest, response_id: str) -> list[GenerationRequest]:
    if req.stop is not None and not isinstance(req.stop, str) and len(req.stop) > 4:
        raise InvalidRequestError("stop may hold at most 4 sequences.", param="stop")
    prompts = req.prompts()
    if not prompts:
        raise InvalidRequestError("prompt must not be empty.", param="prompt")
    params = sampling_from(
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        stop=req.stops(),
        seed=req.seed,
        n=req.n,
    )
    return [
        GenerationRequest(request_id=f"{response_id}-{i}", prompt=p, params=params)
        for i, p in enumerate(prompts)
    ]


async def completion(
    pool: ModelPool, req: CompletionRequest, *, meter: Meter | None = None
) -> TextCompletion:
    engine = pool.chat(req.model)
    response_id = new_id("cmpl")
    requests = _completion_requests(req, response_id)
    results = await asyncio.gather(*(engine.generate(r) for r in requests))
    n = req.n or 1
    choices: list[CompletionChoice] = []
    total = Usage(0, 0)
    for p, (request, result) in enumerate(zip(requests, results, strict=True)):
        total = Usage(
            total.prompt_tokens + result.usage.prompt_tokens,
            total.completion_tokens + result.usage.completion_tokens,
        )
        for i, (text, reason) in enumerate(zip(result.texts, result.finish_reasons, strict=True)):
            shown = request.prompt + text if req.echo else text
            choices.append(CompletionChoice(index=p * n + i, text=shown, finish_reason=reason))
    if meter is not None:
        meter.add(total)
    return TextCompletion(
        id=response_id, created=now(), model=req.model, choices=choices, usage=_usage_out(total)
    )


async def completion_stream(
    pool: ModelPool, req: CompletionRequest, *, meter: Meter | None = None
) -> AsyncIterator[TextCompletion]:
    """Start a streaming text completion (several prompts stream interleaved)."""
    engine = pool.chat(req.model)
    response_id = new_id("cmpl")
    requests = _completion_requests(req, response_id)
    streams = [await _primed(engine.stream(r)) for r in requests]
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    created = now()
    n = req.n or 1

    def chunk(choices: list[CompletionChoice], usage: UsageOut | None = None) -> TextCompletion:
        return TextCompletion(
            id=response_id, created=created, model=req.model, choices=choices, usage=usage
        )

    async def chunks() -> AsyncIterator[TextCompletion]:
        total = Usage(0, 0)
        try:
            if req.echo:
                for p, request in enumerate(requests):
                    for i in range(n):
                        yield chunk(
                            [
                                CompletionChoice(
                                    index=p * n + i, text=request.prompt, finish_reason=None
                                )
                            ]
                        )
            async for p, event in _merge(streams):
                if isinstance(event, Usage):
                    total = Usage(
                        total.prompt_tokens + event.prompt_tokens,
                        total.completion_tokens + event.completion_tokens,
                    )
                    continue
                assert isinstance(event, TextDelta)
                yield chunk(
                    [
                        CompletionChoice(
                            index=p * n + event.index,
                            text=event.text,
                            finish_reason=event.finish_reason,
                        )
                    ]
                )
            if meter is not None:
                meter.add(total)
            if include_usage:
                yield chunk([], _usage_out(total))
        finally:
            for stream in streams:
                await _aclose(stream)

    return chunks()


async def _merge(
    streams: Sequence[AsyncIterator[GenerationEvent]],
) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """Interleave several event streams, tagging each event with its stream's position."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, GenerationEvent | BaseException | None]] = asyncio.Queue()

    async def pump(position: int, stream: AsyncIterator[GenerationEvent]) -> None:
        try:
            async for event in stream:
                await queue.put((position, event))
        except Exception as exc:
            await queue.put((position, exc))
        await queue.put((position, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            position, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield position, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def embeddings(
    pool: ModelPool, req: EmbeddingRequest, *, meter: Meter | None = None
) -> EmbeddingList:
    engine = pool.embedding(req.model)
    texts = req.texts()
    if not texts or any(not t for t in texts):
        raise InvalidRequestError("input must be a non-empty string or list.", param="input")
    if req.dimensions is not None and req.dimensions != engine.dimensions:
        raise InvalidRequestError(
            f"This model returns {engine.dimensions} dimensions only.", param="dimensions"
        )
    output = await engine.embed(texts)
    if meter is not None:
        meter.add(Usage(output.prompt_tokens, 0))
    return EmbeddingList(
        data=[
            EmbeddingData(index=i, embedding=encode_embedding(v, req.encoding_format))
            for i, v in enumerate(output.vectors)
        ],
        model=req.model,
        usage=EmbeddingUsage(prompt_tokens=output.prompt_tokens, total_tokens=output.prompt_tokens),
    )


async def run_batch_line(
    pool: ModelPool, line: BatchRequestLine, *, meter: Meter | None = None
) -> dict[str, Any]:
    """Run one batch request; return its line in OpenAI's batch output format."""
    request_id = new_id("batch_req")
    try:
        body: BaseModel
        if line.url == "/v1/chat/completions":
            body = await chat_completion(
                pool,
                ChatCompletionRequest.model_validate({**line.body, "stream": False}),
                meter=meter,
            )
        elif line.url == "/v1/completions":
            body = await completion(
                pool, CompletionRequest.model_validate({**line.body, "stream": False}), meter=meter
            )
        else:
            body = await embeddings(pool, EmbeddingRequest.model_validate(line.body), meter=meter)
    except ValidationError as exc:
        error = {"code": "validation_error", "message": str(exc).splitlines()[0]}
        return _batch_line(request_id, line.custom_id, 422, None, error)
    except InferenceError as exc:
        return _batch_line(
            request_id,
            line.custom_id,
            exc.status_code,
            None,
            {"code": exc.code, "message": exc.message},
        )
    return _batch_line(request_id, line.custom_id, 200, body.model_dump(mode="json"), None)


def _batch_line(
    request_id: str,
    custom_id: str,
    status: int,
    body: dict[str, Any] | None,
    error: dict[str, str] | None,
) -> dict[str, Any]:
    response = (
        None if body is None else {"status_code": status, "request_id": request_id, "body": body}
    )
    return {"id": request_id, "custom_id": custom_id, "response": response, "error": error}
