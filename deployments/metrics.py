"""Per-deployment request metrics kept in Redis (shared by every API process).

A hash `conveyor:deploy:<id>:metrics` counts requests, errors and tokens; a capped list
`conveyor:deploy:<id>:latency` keeps the latest 1,000 latencies (ms) for percentiles.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

LATENCY_WINDOW = 1000


def _keys(deployment_id: str) -> tuple[str, str]:
    base = f"conveyor:deploy:{deployment_id}"
    return f"{base}:metrics", f"{base}:latency"


async def record(
    redis: Redis, deployment_id: str, *, latency_ms: float, tokens: int, error: bool
) -> None:
    counters, latency = _keys(deployment_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hincrby(counters, "requests", 1)
        if error:
            pipe.hincrby(counters, "errors", 1)
        if tokens:
            pipe.hincrby(counters, "tokens", tokens)
        pipe.lpush(latency, f"{latency_ms:.3f}")
        pipe.ltrim(latency, 0, LATENCY_WINDOW - 1)
        await pipe.execute()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 3)


async def read(redis: Redis, deployment_id: str) -> dict[str, Any]:
    counters, latency = _keys(deployment_id)
    raw = await redis.hgetall(counters)
    values = [float(v) for v in await redis.lrange(latency, 0, LATENCY_WINDOW - 1)]
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


async def forget(redis: Redis, deployment_id: str) -> None:
    await redis.delete(*_keys(deployment_id))
