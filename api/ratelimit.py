"""Per-API-key rate limits with the ``limits`` library, shared by every API process.

Each request is counted against its key (or, without a key, its client address) in one of two
method classes: ``write`` (POST/PUT/PATCH/DELETE) and ``read`` (everything else), each with its
own per-minute budget from the organisation's plan. Counters live in the storage named by a
``limits`` URI: Redis in production (``redis://…``, so several API processes share one budget),
the embedded Redis socket (``redis+unix://…``) or in-process memory (``memory://``) otherwise.

:class:`RateLimiter` decides; the middleware in ``api/middleware`` turns a decision into the
``X-RateLimit-*`` headers on every response and a 429 ``rate_limited`` envelope with
``Retry-After`` when the budget is spent.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from enum import StrEnum

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.aio.strategies import RateLimiter as LimitsStrategy
from limits.storage import storage_from_string

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_READ_PER_MINUTE = 120
DEFAULT_WRITE_PER_MINUTE = 60

_STRATEGIES: dict[str, type[LimitsStrategy]] = {
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}


class MethodClass(StrEnum):
    """Which budget a request draws from."""

    READ = "read"
    WRITE = "write"


def method_class(method: str) -> MethodClass:
    """``write`` for mutating HTTP methods, ``read`` for the rest."""
    return MethodClass.WRITE if method.upper() in WRITE_METHODS else MethodClass.READ


@dataclass(frozen=True)
class RateLimitPolicy:
    """Requests per minute for each method class (from the organisation's plan)."""

    read_per_minute: int = DEFAULT_READ_PER_MINUTE
    write_per_minute: int = DEFAULT_WRITE_PER_MINUTE

    def item(self, klass: MethodClass) -> RateLimitItem:
        amount = self.write_per_minute if klass is MethodClass.WRITE else self.read_per_minute
        return RateLimitItemPerMinute(max(amount, 0), namespace=f"conveyor-{klass.value}")


@dataclass(frozen=True)
class RateLimitDecision:
    """The outcome of counting one request, and the headers that report it."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: int
    """Unix time (seconds) when the current window resets."""
    retry_after: int
    """Seconds until a request in this class may succeed again (0 when allowed)."""

    def headers(self) -> dict[str, str]:
        values = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }
        if not self.allowed:
            values["Retry-After"] = str(self.retry_after)
        return values


def identity_for(token: str | None, client_host: str | None, org_id: str | None = None) -> str:
    """The counter key for a request: a hash of its bearer token (and the organisation it acts
    in: one budget per organisation of a member's key), else its client address.

    The token is hashed so that no key material is ever written to the limiter's storage.
    """
    if token:
        digest = "key:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]
        return f"{digest}:{org_id}" if org_id else digest
    return "ip:" + (client_host or "unknown")


def storage_uri_for(uri: str) -> str:
    """Map a plain ``limits`` URI (``redis://``, ``memory://`` …) to its asyncio form."""
    return uri if uri.startswith("async+") else "async+" + uri


class RateLimiter:
    """Counts requests per identity and method class in one ``limits`` storage."""

    def __init__(
        self,
        storage_uri: str = "memory://",
        *,
        strategy: str = "fixed-window",
        key_prefix: str = "conveyor-ratelimit",
    ) -> None:
        if strategy not in _STRATEGIES:
            raise ValueError(
                f"unknown rate-limit strategy {strategy!r}; one of {list(_STRATEGIES)}"
            )
        async_uri = storage_uri_for(storage_uri)
        options: dict[str, str] = {}
        if "redis" in async_uri.split("://", 1)[0]:
            # redis-py's asyncio client is already installed (Celery's broker client).
            options = {"implementation": "redispy", "key_prefix": key_prefix}
        storage = storage_from_string(async_uri, **options)
        if not isinstance(storage, Storage):
            raise ValueError(f"{storage_uri!r} has no asyncio storage in limits")
        self.storage: Storage = storage
        self.strategy: LimitsStrategy = _STRATEGIES[strategy](self.storage)
        self._window_ends: dict[str, float] = {}

    async def hit(
        self, identity: str, method: str, policy: RateLimitPolicy | None = None
    ) -> RateLimitDecision:
        """Count one request and say whether it is within its budget."""
        klass = method_class(method)
        item = (policy or RateLimitPolicy()).item(klass)
        now = time.time()
        if isinstance(self.strategy, FixedWindowRateLimiter):
            # The fixed window's own two steps (what FixedWindowRateLimiter.hit and
            # get_window_stats do) in one round trip per request: the counter from the storage's
            # incr, and the window's end from get_expiry only when it is not yet known here.
            key = item.key_for(identity)
            count = await self.storage.incr(key, item.get_expiry())
            reset_time = self._window_ends.get(key, 0.0)
            if reset_time <= now:
                reset_time = await self.storage.get_expiry(key)
                if len(self._window_ends) > 50_000:
                    self._window_ends.clear()
                self._window_ends[key] = reset_time
            allowed = count <= item.amount
            remaining = item.amount - count
        else:
            allowed = await self.strategy.hit(item, identity)
            stats = await self.strategy.get_window_stats(item, identity)
            reset_time, remaining = stats.reset_time, stats.remaining
        return RateLimitDecision(
            allowed=allowed,
            limit=item.amount,
            remaining=max(0, remaining),
            reset_at=math.ceil(reset_time),
            retry_after=0 if allowed else max(1, math.ceil(reset_time - now)),
        )

    async def peek(
        self, identity: str, method: str, policy: RateLimitPolicy | None = None
    ) -> RateLimitDecision:
        """The budget as it stands, without counting a request (health checks, docs)."""
        item = (policy or RateLimitPolicy()).item(method_class(method))
        stats = await self.strategy.get_window_stats(item, identity)
        return RateLimitDecision(
            allowed=True,
            limit=item.amount,
            remaining=max(0, stats.remaining),
            reset_at=math.ceil(stats.reset_time),
            retry_after=0,
        )

    async def check_storage(self) -> bool:
        """True when the counter storage answers (used by health checks)."""
        return bool(await self.storage.check())

    async def reset(self) -> None:
        """Drop every counter (tests only; on shared Redis this clears all processes' budgets)."""
        await self.storage.reset()
