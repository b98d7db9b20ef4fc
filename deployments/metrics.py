"""Per-deployment request metrics kept in Redis (shared by every API process).

A hash `conveyor:deploy:<id>:metrics` counts requests, errors and tokens; a capped list
`conveyor:deploy:<id>:latency` keeps the latest 1,000 latencies (ms) for percentiles;
`conveyor:deploy:<id>:last_request` holds the Unix time of the latest proxied request (the idle
clock of scale-to-zero).

The proxy does not talk to Redis on a request's path: it adds to this process's
`MetricsBuffer`, which writes everything gathered in one pipeline at most `FLUSH_SECONDS` after
the first unwritten request. Readers of the same process flush first; other processes' requests
show within that delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.asyncio import Redis

log = logging.getLogger(__name__)

LATENCY_WINDOW = 1000
FLUSH_SECONDS = 0.5


def _keys(deployment_id: str) -> tuple[str, str]:
    base = f"conveyor:deploy:{deployment_id}"
    return f"{base}:metrics", f"{base}:latency"


def last_request_key(deployment_id: str) -> str:
    return f"conveyor:deploy:{deployment_id}:last_request"


@dataclass
class _Pending:
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    latencies: list[str] = field(default_factory=list)
    last_request: float = 0.0


class MetricsBuffer:
    """Request metrics of one event loop, written to Redis in batches."""

    def __init__(self, redis_client: Callable[[], Redis], flush_seconds: float = FLUSH_SECONDS):
        self._redis = redis_client
        self.flush_seconds = flush_seconds
        self._pending: dict[str, _Pending] = {}
        self._flusher: asyncio.Task[None] | None = None

    def add(self, deployment_id: str, *, latency_ms: float, tokens: int, error: bool) -> None:
        """Count one request; schedules a flush when it is the first unwritten one."""
        entry = self._pending.get(deployment_id)
        if entry is None:
            entry = self._pending[deployment_id] = _Pending()
        entry.requests += 1
        entry.errors += int(error)
        entry.tokens += tokens
        entry.latencies.append(f"{latency_ms:.3f}")
        entry.last_request = time.time()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_seconds)
        try:
            await self.flush()
        except Exception:  # metrics never fail a request
            log.warning("writing deployment metrics failed (counts dropped)", exc_info=True)

    async def aclose(self) -> None:
        """Write what is pending now and stop the scheduled flush (process shutdown)."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        await self.flush()

    async def flush(self) -> None:
        """Write what was gathered (one pipeline round trip)."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        async with self._redis().pipeline(transaction=False) as pipe:
            for deployment_id, entry in pending.items():
                counters, latency = _keys(deployment_id)
                pipe.hincrby(counters, "requests", entry.requests)
                if entry.errors:
                    pipe.hincrby(counters, "errors", entry.errors)
                if entry.tokens:
                    pipe.hincrby(counters, "tokens", entry.tokens)
                pipe.lpush(latency, *entry.latencies[-LATENCY_WINDOW:])
                pipe.ltrim(latency, 0, LATENCY_WINDOW - 1)
                pipe.set(last_request_key(deployment_id), f"{entry.last_request:.3f}")
            await pipe.execute()


_buffers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MetricsBuffer] = (
    weakref.WeakKeyDictionary()
)


def buffer(redis_client: Callable[[], Redis]) -> MetricsBuffer:
    """This event loop's buffer (a loop's tasks and Redis connections are its own)."""
    loop = asyncio.get_running_loop()
    found = _buffers.get(loop)
    if found is None:
        found = _buffers[loop] = MetricsBuffer(redis_client)
    return found


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 3)


async def read(redis_client: Redis, deployment_id: str) -> dict[str, Any]:
    counters, latency = _keys(deployment_id)
    raw = await redis_client.hgetall(counters)
    values = [float(v) for v in await redis_client.lrange(latency, 0, LATENCY_WINDOW - 1)]
    count = {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}
    return {
        "requests": count.get("requests", 0),
        "errors": count.get("errors", 0),
        "tokens": count.get("tokens", 0),
        "latency_ms": {
            "p50": percentile(values, 0.5),
            "p90": percentile(values, 0.9),
            "p99": percentile(values, 0.99),
        },
    }


def last_request_at(client: redis.Redis, deployment_id: str) -> float | None:
    """Unix time of the deployment's latest proxied request, None when none is recorded."""
    raw = client.get(last_request_key(deployment_id))
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        return float(raw.decode() if isinstance(raw, bytes) else raw)
    return None


async def forget(redis_client: Redis, deployment_id: str) -> None:
    await redis_client.delete(*_keys(deployment_id), last_request_key(deployment_id))
