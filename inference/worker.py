"""The inference worker's runtime: one event loop and one set of engines per worker process.

Celery runs inference tasks on a threads pool; each task thread hands its job to the process's
single engine event loop (``InferenceRuntime.run``), so every request the worker is handling at
once lands in the same engine and is batched together. ``execute`` runs one job there: it relays
chunks or the final body through Redis (``inference.relay``), stops when the job is cancelled,
and returns the job's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis

from common import redis_clients
from common.process import ProcessResource
from config import Settings, get_settings
from inference import relay, service
from inference.engines import EngineOptions, create_engine
from inference.errors import InferenceError
from inference.registry import ModelPool, ModelSpec, configured_models
from inference.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    InferenceJobInput,
)
from inference.tools import merge_deltas, merged

logger = logging.getLogger(__name__)
T = TypeVar("T")


class JobHooks(Protocol):
    """What ``execute`` needs from the job runner (blocking calls; run off the loop)."""

    def cancelled(self, min_interval: float = 0.0) -> bool: ...

    def progress(self, **counters: Any) -> None: ...

    def add_result(self, *, data: dict[str, Any] | None = None, name: str = "") -> int: ...


class JobWasCancelled(Exception):
    """The job was cancelled while it ran (by the API on disconnect or by a user)."""


@dataclass
class Outcome:
    result: dict[str, Any] | None
    meter: service.Meter
    engine_seconds: float


class InferenceRuntime:
    """Engines started on one background event loop, plus the Redis client for the relay."""

    def __init__(self, specs: list[ModelSpec], options: EngineOptions, redis_url: str) -> None:
        self.specs = specs
        self.options = options
        self.redis_url = redis_url
        self.loop = asyncio.new_event_loop()
        self.pool = ModelPool(create_engine(spec, options) for spec in specs)
        self._thread = threading.Thread(target=self.loop.run_forever, name="inference-loop")
        self._thread.daemon = True
        self.redis: Redis | None = None

    def start(self) -> None:
        self._thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        self.redis = redis_clients.async_client(self.redis_url)
        await self.pool.start()
        worker = f"{socket.gethostname()}:{os.getpid()}"
        await relay.announce_models(self.redis, [(s.name, s.kind) for s in self.specs], worker)
        logger.info("inference runtime ready: %s", ", ".join(self.pool.names()))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the engine loop from any thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        async def _close() -> None:
            await self.pool.close()
            await redis_clients.aclose_clients()  # the engine loop's clients

        if self._thread.is_alive():
            self.run(_close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


def build_runtime(settings: Settings) -> InferenceRuntime:
    """The runtime of the configured models (``CONVEYOR_MODELS`` and the default embedding)."""
    specs = configured_models(
        settings.models, default_embedding=settings.inference_default_embedding
    )
    options = EngineOptions.from_settings(settings)
    return InferenceRuntime(specs, options, settings.resolved_redis_url())


def _started_runtime() -> InferenceRuntime:
    runtime = build_runtime(get_settings())
    runtime.start()
    return runtime


#: This process's engines: loaded by the worker's start-up hook (threads/solo pools) or by the
#: first job, closed by its shutdown hook.
RUNTIME: ProcessResource[InferenceRuntime] = ProcessResource(
    "inference runtime", _started_runtime, InferenceRuntime.close
)


async def execute(
    runtime: InferenceRuntime,
    job_id: str,
    payload: InferenceJobInput,
    hooks: JobHooks,
    record_usage: Callable[[service.Meter, float], None],
    before_end: Callable[[dict[str, Any] | None, service.Meter], None] | None = None,
) -> Outcome:
    """Run one inference job on the engine loop; raise ``JobWasCancelled`` when cancelled.

    Usage is recorded (``record_usage``, blocking, run off the loop) before the final relay
    event, so a client holding its answer can already see the usage it caused; so is
    ``before_end`` (the caller's own writes of the result, e.g. an assistant's reply).
    """
    assert runtime.redis is not None
    redis = runtime.redis
    meter = service.Meter()
    started = time.monotonic()
    if payload.relay:
        await relay.publish(redis, job_id, "started")
    work = asyncio.ensure_future(_dispatch(runtime, job_id, payload, hooks, meter))
    watcher = asyncio.ensure_future(_watch_cancel(redis, job_id, hooks))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            raise JobWasCancelled(job_id)
        result = work.result()
        seconds = time.monotonic() - started
        await asyncio.to_thread(record_usage, meter, seconds)
        if before_end is not None:
            await asyncio.to_thread(before_end, result, meter)
        if payload.relay and payload.operation != "batch":
            if bool(payload.body.get("stream")):
                await relay.publish(redis, job_id, "end")
            else:
                await relay.publish(redis, job_id, "result", json.dumps(result))
    except InferenceError as exc:
        if payload.relay:
            error = {"status": exc.status_code, "error": exc.to_error_object()}
            await relay.publish(redis, job_id, "error", json.dumps(error))
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return Outcome(result=result, meter=meter, engine_seconds=seconds)


#: How long the cancel watcher blocks on the API's signal between two looks at the store (a
#: job cancelled through ``/v1/jobs/{id}/cancel`` is seen within this).
STORE_CANCEL_CHECK_SECONDS = 1.0


async def _watch_cancel(redis: Redis, job_id: str, hooks: JobHooks) -> None:
    """Return once the API signals a cancel (the process's one subscription wakes it, no
    polling of Redis) or the store says the job was cancelled."""
    async with relay.cancel_watch(redis, job_id) as cancelled:
        while not cancelled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancelled.wait(), STORE_CANCEL_CHECK_SECONDS)
            if not cancelled.is_set() and await asyncio.to_thread(hooks.cancelled):
                return


async def _dispatch(
    runtime: InferenceRuntime,
    job_id: str,
    payload: InferenceJobInput,
    hooks: JobHooks,
    meter: service.Meter,
) -> dict[str, Any] | None:
    pool = runtime.pool
    op = payload.operation
    if op == "batch":
        await _run_batch(pool, payload, hooks, meter)
        return None
    stream = bool(payload.body.get("stream")) and payload.relay
    body: dict[str, Any]
    if op == "embeddings":
        body = (
            await service.embeddings(
                pool, EmbeddingRequest.model_validate(payload.body), meter=meter
            )
        ).model_dump()
    elif op == "chat.completions":
        chat = ChatCompletionRequest.model_validate(payload.body)
        if stream:
            return await _relay_chunks(
                runtime,
                job_id,
                await service.chat_completion_stream(pool, chat, meter=meter),
                meter,
            )
        body = (await service.chat_completion(pool, chat, meter=meter)).model_dump()
    else:
        text = CompletionRequest.model_validate(payload.body)
        if stream:
            return await _relay_chunks(
                runtime, job_id, await service.completion_stream(pool, text, meter=meter), meter
            )
        body = (await service.completion(pool, text, meter=meter)).model_dump()
    return body


async def _relay_chunks(
    runtime: InferenceRuntime, job_id: str, chunks: Any, meter: service.Meter
) -> dict[str, Any]:
    """Publish chunks as they come; chunks produced while a write is in flight go together in
    the next stream entry (one JSON document a line), so Redis writes never fall behind. Once
    the first text has gone out, a job writes at most once per ``inference_relay_flush_ms``:
    the tokens of the steps in between travel together (one XADD here, one read and one send in
    the API), which is what a token costs on the relay when the engine is fast."""
    assert runtime.redis is not None
    flush_s = get_settings().inference_relay_flush_ms / 1000.0
    pending: asyncio.Queue[str | None] = asyncio.Queue()
    texts: dict[int, list[str]] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}

    async def produce() -> None:
        try:
            async for chunk in chunks:
                _collect_text(chunk, texts, calls)
                pending.put_nowait(chunk.model_dump_json())
        finally:
            pending.put_nowait(None)

    producer = asyncio.ensure_future(produce())
    count = 0
    try:
        finished = False
        while not finished:
            lines = [await pending.get()]
            while not pending.empty():
                lines.append(pending.get_nowait())
            if lines[-1] is None:
                finished = True
                lines.pop()
            if lines:
                data = "\n".join(line for line in lines if line is not None)
                await relay.publish(runtime.redis, job_id, "chunk", data)
                count += len(lines)
                if count > 1 and flush_s > 0 and not finished:  # past the first token
                    await asyncio.sleep(flush_s)
        await producer  # re-raises an engine error that ended the stream
    finally:
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
    return {
        "object": "stream.summary",
        "chunks": count,
        "texts": ["".join(texts[i]) for i in sorted(texts)],
        "tool_calls": [merged(calls[i]) for i in sorted(calls)],
        "usage": {
            "prompt_tokens": meter.prompt_tokens,
            "completion_tokens": meter.completion_tokens,
            "total_tokens": meter.prompt_tokens + meter.completion_tokens,
        },
    }


def _collect_text(
    chunk: Any, texts: dict[int, list[str]], calls: dict[int, dict[int, dict[str, Any]]]
) -> None:
    """Keep a streamed choice's text (chat deltas or text chunks) and tool calls for the
    stream's summary."""
    for choice in chunk.choices:
        delta = getattr(choice, "delta", None)
        text = delta.content if delta is not None else getattr(choice, "text", None)
        if text:
            texts.setdefault(choice.index, []).append(text)
        if delta is not None and delta.tool_calls:
            merge_deltas(calls.setdefault(choice.index, {}), delta.tool_calls)


async def _run_batch(
    pool: ModelPool, payload: InferenceJobInput, hooks: JobHooks, meter: service.Meter
) -> None:
    """Run every line (concurrently, so they batch in the engine); write JSONL result lines."""
    total = len(payload.requests)
    counters = {"requests_total": total, "requests_completed": 0, "requests_failed": 0}
    await asyncio.to_thread(hooks.progress, **counters)
    limit = asyncio.Semaphore(64)
    write_lock = asyncio.Lock()
    last_progress = time.monotonic()

    async def one(line: Any) -> None:
        nonlocal last_progress
        async with limit:
            out = await service.run_batch_line(pool, line, meter=meter)
        async with write_lock:
            await asyncio.to_thread(hooks.add_result, data=out, name="line")
            key = "requests_failed" if out["error"] is not None else "requests_completed"
            counters[key] += 1
            if time.monotonic() - last_progress > 0.5:
                last_progress = time.monotonic()
                await asyncio.to_thread(hooks.progress, **counters)

    await asyncio.gather(*(one(line) for line in payload.requests))
    await asyncio.to_thread(hooks.progress, **counters)
    return None
