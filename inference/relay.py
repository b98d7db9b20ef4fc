"""The token relay between an inference worker and the API: one Redis stream per job.

The worker appends events (``started``, ``chunk`` — one or more chunk JSON documents, one a
line —, ``result``, ``error``, ``end``) to
``conveyor:inference:<job>:events``; the API reads them from the start (a stream keeps what was
written before the reader arrived, unlike pub/sub) and relays them to the client. Each side
does it for all its jobs at once: a worker process group-writes (:class:`RelayWriter`), an API
process reads every stream it follows with one ``XREAD`` (:class:`RelayReader`). The API sets
``conveyor:inference:<job>:cancel`` when its client goes away and announces it on
:data:`CANCEL_CHANNEL`; a worker process watches its running jobs with one subscription
(:class:`CancelWatcher`). Workers announce the models they serve in the hash
``conveyor:inference:models``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from redis.asyncio import Redis

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

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
    await _of(_WRITERS, RelayWriter, redis).publish(job_id, type_, data)


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
    """Events after ``after`` (waiting up to ``block_ms`` when none are there yet).

    Every job an event loop follows is read by one :class:`RelayReader` per Redis client: one
    blocking ``XREAD`` of all their streams at once, not one per job (a reply's tokens for a
    hundred sockets cost one round trip, not a hundred, and no connection is held per job)."""
    return await _of(_READERS, RelayReader, redis).read(job_id, after, block_ms)


#: The reader's ``XREAD`` blocks at most this long (a new follower wakes it at once).
READER_BLOCK_MS = 5000
#: A followed stream nobody asked for in this long is dropped (its reader went away).
FORGET_AFTER_S = 30.0
#: One that reached its end is dropped this long after its last read.
FORGET_ENDED_AFTER_S = 5.0
_FINAL: frozenset[str] = frozenset({"end", "result", "error"})


def _order(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


@dataclass
class _Followed:
    """One job's stream as this process has read it so far."""

    key: str
    position: str  # the XREAD position: the last entry read
    events: list[RelayEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    last_read: float = field(default_factory=time.monotonic)
    ended: bool = False
    failure: BaseException | None = None

    def after(self, entry_id: str) -> list[RelayEvent]:
        """The events after ``entry_id``; those up to it are dropped (one reader per job)."""
        mark = _order(entry_id)
        keep = [e for e in self.events if _order(e.id) > mark]
        self.events = keep
        return list(keep)


class RelayReader:
    """Follows the job streams this event loop reads: one task ``XREAD``s all of them (and a
    private wake-up stream), files what comes back under its job and wakes that job's reader.
    A job's first read adds its stream and wakes the ``XREAD`` by appending to the wake-up
    stream (no race: ``XREAD`` from a position returns what was appended before it arrived).
    A Redis failure is raised to every job's next read, then the task tries again."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.wake_key = f"conveyor:relay:wake:{uuid.uuid4().hex}"
        self._wake_position = "0-0"
        self._woken = False
        self._kick = asyncio.Event()  # a new follower while every followed stream had ended
        self.followed: dict[str, _Followed] = {}
        self._by_key: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def read(self, job_id: str, after: str, block_ms: int) -> list[RelayEvent]:
        followed = self.followed.get(job_id)
        if followed is None:
            followed = self.followed[job_id] = _Followed(events_key(job_id), after)
            self._by_key[followed.key] = job_id
            if self._running():
                await self._wake()
        else:
            self._running()  # a task that ended (or died) reads again
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000
        while True:
            followed.last_read = time.monotonic()
            if followed.failure is not None:
                failure, followed.failure = followed.failure, None
                raise failure
            found = followed.after(after)
            remaining = deadline - loop.time()
            if found or remaining <= 0:
                return found
            followed.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(followed.changed.wait(), remaining)

    def _running(self) -> bool:
        """True when the reading task was already running; else start it (it reads every
        followed stream from the start: nothing to wake)."""
        if self._task is not None and not self._task.done():
            return True
        self._task = asyncio.ensure_future(self._run())
        return False

    async def _wake(self) -> None:
        """Make the running task's XREAD take in a new stream."""
        self._kick.set()
        if self._woken:  # a wake-up not yet seen by the XREAD: it reads this stream too
            return
        self._woken = True
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self.wake_key, {"w": b"1"}, maxlen=16, approximate=True)
            pipe.expire(self.wake_key, 60)
            await pipe.execute()

    def _streams(self) -> dict[Any, Any]:
        now = time.monotonic()
        for job_id, followed in list(self.followed.items()):
            idle = now - followed.last_read
            if idle > FORGET_AFTER_S or (followed.ended and idle > FORGET_ENDED_AFTER_S):
                del self.followed[job_id]
                self._by_key.pop(followed.key, None)
        streams: dict[Any, Any] = {f.key: f.position for f in self.followed.values() if not f.ended}
        if streams:
            streams[self.wake_key] = self._wake_position
        return streams

    async def _run(self) -> None:
        while self.followed:
            self._woken = False
            self._kick.clear()
            streams = self._streams()
            try:
                if not streams:  # all ended: kept a moment for their last reads
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._kick.wait(), FORGET_ENDED_AFTER_S / 2)
                    continue
                answer: Any = await self.redis.xread(streams, block=READER_BLOCK_MS, count=512)
            except Exception as exc:  # every follower's next read raises it; then retry
                for followed in self.followed.values():
                    followed.failure = exc
                    followed.changed.set()
                await asyncio.sleep(0.5)
                continue
            for raw_key, entries in answer or []:
                self._file(_text(raw_key), entries)

    def _file(self, key: str, entries: list[Any]) -> None:
        if key == self.wake_key:
            self._wake_position = _text(entries[-1][0])
            return
        followed = self.followed.get(self._by_key.get(key, ""))
        if followed is None or not entries:
            return
        for entry_id, fields in entries:
            followed.position = _text(entry_id)  # past it, even when it cannot be read
            if b"t" not in fields:
                logger.warning("relay: entry %s of %s has no type; skipped", entry_id, key)
                continue
            kind = _text(fields[b"t"])
            data = _text(fields.get(b"d", b""))
            followed.events.append(RelayEvent(id=followed.position, type=kind, data=data))  # type: ignore[arg-type]
            followed.ended = followed.ended or kind in _FINAL
        followed.changed.set()


_READERS: weakref.WeakKeyDictionary[Redis, RelayReader] = weakref.WeakKeyDictionary()


#: The channel the API announces cancelled jobs on (the message is the job id).
CANCEL_CHANNEL = "conveyor:inference:cancelled"


async def request_cancel(redis: Redis, job_id: str) -> None:
    """Flag the job (``cancel_requested``: seen by a worker that starts it later) and announce
    it on :data:`CANCEL_CHANNEL` (a worker running it stops at once)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(cancel_key(job_id), b"1", ex=EVENT_TTL_SECONDS)
        pipe.publish(CANCEL_CHANNEL, job_id)
        await pipe.execute()


async def cancel_requested(redis: Redis, job_id: str) -> bool:
    return bool(await redis.exists(cancel_key(job_id)))


@contextlib.asynccontextmanager
async def cancel_watch(redis: Redis, job_id: str) -> AsyncIterator[asyncio.Event]:
    """An event set when the API asks to cancel ``job_id`` (a flag set before the watch began
    included). Every job an event loop runs is watched by one subscription to
    :data:`CANCEL_CHANNEL` (:class:`CancelWatcher`), not a blocking read per job."""
    watcher = _of(_WATCHERS, CancelWatcher, redis)
    cancelled = watcher.add(job_id)
    try:
        if await cancel_requested(redis, job_id):  # asked before the watch began
            cancelled.set()
        yield cancelled
    finally:
        watcher.remove(job_id, cancelled)


class CancelWatcher:
    """One subscription to :data:`CANCEL_CHANNEL` for the jobs an event loop runs. It ends when
    no job is watched. Each time it subscribes (the first time, or again after a lost
    connection) it looks at the watched jobs' flags, so a cancel announced before the
    subscription took is not missed."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.watched: dict[str, list[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()  # observable by tests

    def add(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self.watched.setdefault(job_id, []).append(event)
        if self._task is None or self._task.done():
            self.subscribed.clear()
            self._task = asyncio.ensure_future(self._run())
        return event

    def remove(self, job_id: str, event: asyncio.Event) -> None:
        events = self.watched.get(job_id, [])
        if event in events:
            events.remove(event)
        if not events:
            self.watched.pop(job_id, None)

    async def _run(self) -> None:
        while self.watched:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(CANCEL_CHANNEL)
                    # Announced before the subscription took (or while Redis was away): the
                    # flags tell.
                    await self._check_flags()
                    self.subscribed.set()
                    while self.watched:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None:
                            self._cancel(_text(message["data"]))
            except Exception:  # Redis went away: subscribe again (the store check still runs)
                self.subscribed.clear()
                await asyncio.sleep(0.5)

    def _cancel(self, job_id: str) -> None:
        for event in self.watched.get(job_id, []):
            event.set()

    async def _check_flags(self) -> None:
        jobs = list(self.watched)
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in jobs:
                pipe.exists(cancel_key(job_id))
            flags = await pipe.execute()
        for job_id, flag in zip(jobs, flags, strict=True):
            if flag:
                self._cancel(job_id)


_WATCHERS: weakref.WeakKeyDictionary[Redis, CancelWatcher] = weakref.WeakKeyDictionary()


def _of(
    registry: weakref.WeakKeyDictionary[Redis, _T], make: Callable[[Redis], _T], redis: Redis
) -> _T:
    """The registry's object for this Redis client (one per client, so one per event loop)."""
    found = registry.get(redis)
    if found is None:
        found = registry[redis] = make(redis)
    return found


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
