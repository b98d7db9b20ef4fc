"""The token relay between an inference worker and the API: one Redis stream per job.

The worker appends events (``started``, ``chunk`` — one or more chunk JSON documents, one a
line —, ``result``, ``error``, ``end``) to
``conveyor:inference:<job>:events``; the API reads them from the start (a stream keeps what was
written before the reader arrived, unlike pub/sub) and relays them to the client. The API sets
``conveyor:inference:<job>:cancel`` when its client goes away; the worker watches it. Workers
announce the models they serve in the hash ``conveyor:inference:models``.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

EventType = Literal["started", "chunk", "result", "error", "end"]
EVENT_TTL_SECONDS = 3600
MODELS_KEY = "conveyor:inference:models"
ANNOUNCE_TTL_SECONDS = 24 * 3600


def events_key(job_id: str) -> str:
    return f"conveyor:inference:{job_id}:events"


def cancel_key(job_id: str) -> str:
    return f"conveyor:inference:{job_id}:cancel"


@dataclass(frozen=True)
class RelayEvent:
    id: str
    type: EventType
    data: str

    def json(self) -> Any:
        return json.loads(self.data) if self.data else None


async def publish(redis: Redis, job_id: str, type_: EventType, data: str = "") -> None:
    """Append an event to the job's stream; returns once it is in Redis.

    Every job a worker process relays at once writes through one :class:`RelayWriter` per Redis
    client: events published while a write is in flight go together in the next pipeline (one
    round trip and one connection checkout for all of them, not one per event and job)."""
    writer = _WRITERS.get(redis)
    if writer is None:
        writer = _WRITERS[redis] = RelayWriter(redis)
    await writer.publish(job_id, type_, data)


class RelayWriter:
    """Group-writes relay events: a caller's event joins the pending batch, and one flushing
    task sends each batch as a pipeline (events of a job stay in order: batches are sent one
    after another, in the order their events were published)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pending: list[tuple[str, EventType, str, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def publish(self, job_id: str, type_: EventType, data: str) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((job_id, type_, data, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        await done

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id, type_, data, _ in batch:
                        key = events_key(job_id)
                        pipe.xadd(key, {"t": type_, "d": data})
                        if type_ in ("started", "end", "error", "result"):
                            pipe.expire(key, EVENT_TTL_SECONDS)
                    await pipe.execute()
            except Exception as exc:  # every waiter of the batch sees the failure
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for *_, done in batch:
                    if not done.done():
                        done.set_result(None)


_WRITERS: weakref.WeakKeyDictionary[Redis, RelayWriter] = weakref.WeakKeyDictionary()


async def read(
    redis: Redis, job_id: str, after: str = "0", block_ms: int = 500
) -> list[RelayEvent]:
    """Events after ``after`` (blocking up to ``block_ms`` when none are there yet)."""
    answer: Any = await redis.xread({events_key(job_id): after}, block=block_ms, count=512)
    events: list[RelayEvent] = []
    for _key, entries in answer or []:
        for entry_id, fields in entries:
            kind = _text(fields[b"t"])
            data = _text(fields.get(b"d", b""))
            events.append(RelayEvent(id=_text(entry_id), type=kind, data=data))  # type: ignore[arg-type]
    return events


def cancel_signal_key(job_id: str) -> str:
    return f"conveyor:inference:{job_id}:cancel-signal"


async def request_cancel(redis: Redis, job_id: str) -> None:
    """Flag the job (``cancel_requested``) and wake the worker blocked in ``wait_cancel``."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(cancel_key(job_id), b"1", ex=EVENT_TTL_SECONDS)
        pipe.rpush(cancel_signal_key(job_id), b"1")
        pipe.expire(cancel_signal_key(job_id), EVENT_TTL_SECONDS)
        await pipe.execute()


async def cancel_requested(redis: Redis, job_id: str) -> bool:
    return bool(await redis.exists(cancel_key(job_id)))


async def wait_cancel(redis: Redis, job_id: str, timeout_s: float) -> bool:
    """Block (no polling) until the API asks to cancel the job or ``timeout_s`` passes; True
    when it asked. The signal stays for a later waiter (it is pushed back)."""
    popped = await redis.blpop([cancel_signal_key(job_id)], timeout=timeout_s)
    if popped is None:
        return False
    await redis.rpush(cancel_signal_key(job_id), b"1")
    return True


async def announce_models(redis: Redis, models: Sequence[tuple[str, str]], worker: str) -> None:
    """Record (name, kind) pairs this worker serves."""
    if not models:
        return
    now = time.time()
    mapping = {
        name: json.dumps({"kind": kind, "worker": worker, "announced_at": now})
        for name, kind in models
    }
    await redis.hset(MODELS_KEY, mapping=dict(mapping))  # type: ignore[arg-type]
    await redis.expire(MODELS_KEY, ANNOUNCE_TTL_SECONDS)


async def announced_models(redis: Redis) -> dict[str, str]:
    """name → kind of every model a worker announced in the last day."""
    raw: dict[Any, Any] = await redis.hgetall(MODELS_KEY)
    cutoff = time.time() - ANNOUNCE_TTL_SECONDS
    models: dict[str, str] = {}
    for name, value in raw.items():
        info = json.loads(value)
        if info.get("announced_at", 0) >= cutoff:
            models[_text(name)] = str(info.get("kind", "chat"))
    return models


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
