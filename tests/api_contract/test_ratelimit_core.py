"""The rate limiter on its own: method classes, headers, and one budget shared over Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from api.ratelimit import (
    MethodClass,
    RateLimitDecision,
    RateLimiter,
    RateLimitPolicy,
    identity_for,
    method_class,
)

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[2]


def _require_redis() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis not reachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")


def test_method_classes() -> None:
    for method in ("POST", "put", "PATCH", "DELETE"):
        assert method_class(method) is MethodClass.WRITE
    for method in ("GET", "HEAD", "OPTIONS"):
        assert method_class(method) is MethodClass.READ


def test_identity_never_contains_the_token() -> None:
    token = "cvy_live_" + "a" * 40
    ident = identity_for(token, "10.0.0.1")
    assert token not in ident and "aaaa" not in ident and ident.startswith("key:")
    assert identity_for(None, "10.0.0.1") == "ip:10.0.0.1"


async def _drain(limiter: RateLimiter, ident: str, method: str, n: int) -> list[RateLimitDecision]:
    policy = RateLimitPolicy(read_per_minute=5, write_per_minute=3)
    return [await limiter.hit(ident, method, policy) for _ in range(n)]


@pytest.mark.parametrize("uri", ["memory://", "redis"])
def test_write_budget_is_stricter_and_separate_from_reads(uri: str) -> None:
    if uri == "redis":
        _require_redis()
        uri = REDIS_URL
    limiter = RateLimiter(uri, key_prefix=f"test-rl-{uuid.uuid4().hex}")
    ident = "key:test"

    async def run() -> tuple[list[RateLimitDecision], list[RateLimitDecision]]:
        writes = await _drain(limiter, ident, "POST", 4)
        reads = await _drain(limiter, ident, "GET", 6)
        await limiter.reset()
        return writes, reads

    writes, reads = asyncio.run(run())
    assert [d.allowed for d in writes] == [True, True, True, False]
    assert [d.remaining for d in writes] == [2, 1, 0, 0]
    assert [d.allowed for d in reads] == [True] * 5 + [False]
    assert writes[0].limit == 3 and reads[0].limit == 5
    denied = writes[-1]
    now = time.time()
    assert now < denied.reset_at <= now + 61
    assert 1 <= denied.retry_after <= 61
    headers = denied.headers()
    assert headers["X-RateLimit-Limit"] == "3"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["Retry-After"] == str(denied.retry_after)
    assert "Retry-After" not in writes[0].headers()


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter("memory://", strategy="leaky")


_WORKER = """
import asyncio, json, sys
from api.ratelimit import RateLimiter, RateLimitPolicy
async def main():
    limiter = RateLimiter(sys.argv[1], key_prefix=sys.argv[2])
    policy = RateLimitPolicy(read_per_minute=1000, write_per_minute=25)
    allowed = 0
    for _ in range(20):
        allowed += (await limiter.hit("key:shared", "POST", policy)).allowed
    print(json.dumps({"allowed": allowed}))
asyncio.run(main())
"""


def test_two_processes_share_one_redis_budget() -> None:
    _require_redis()
    prefix = f"test-rl-{uuid.uuid4().hex}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, REDIS_URL, prefix],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    allowed = [json.loads(p.communicate(timeout=60)[0])["allowed"] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    # 40 requests against one budget of 25: exactly 25 pass in total, whoever got them.
    assert sum(allowed) == 25, allowed
    asyncio.run(RateLimiter(REDIS_URL, key_prefix=prefix).reset())
