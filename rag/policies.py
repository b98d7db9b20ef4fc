"""Endpoint policies, checked on every query in this order: access (403 ``forbidden``), rate
limits per caller per endpoint (429 ``rate_limited`` with ``Retry-After``; counters in Redis via
the ``limits`` library, shared by every API process), the daily token budget per caller (429
``quota_exceeded``). No access policy: only the owner organisation may call the endpoint."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy.orm import Session

from config import get_settings
from rag import repository
from rag.errors import AccessDenied, BudgetExceeded, EndpointRateLimited
from rag.models import Endpoint, Policy
from rag.schemas import AccessConfig, BudgetConfig, RateLimitConfig
from store.models import Organization


@dataclass(frozen=True)
class Caller:
    """Who queries an endpoint: a key of an organisation, or nobody (a public endpoint)."""

    org_id: str | None
    key_id: str | None
    client: str = ""

    @property
    def identity(self) -> str:
        return f"key:{self.key_id}" if self.key_id else f"anon:{self.client}"[:80]


@lru_cache(maxsize=4)
def _limiter(url: str) -> FixedWindowRateLimiter:
    storage = (
        storage_from_string(url, key_prefix="conveyor-rag")
        if url.startswith("redis")
        else (storage_from_string(url))
    )
    return FixedWindowRateLimiter(storage)


def _policies(session: Session, endpoint: Endpoint) -> list[Policy]:
    ids = list(endpoint.settings.get("policy_ids") or [])
    return [p for p in (session.get(Policy, i) for i in ids) if p is not None]


def check_access(session: Session, endpoint: Endpoint, caller: Caller) -> list[Policy]:
    """The endpoint's policies, once the caller passed its access rules."""
    policies = _policies(session, endpoint)
    access = [AccessConfig.model_validate(p.config) for p in policies if p.type == "access"]
    if caller.org_id == endpoint.org_id:
        return policies
    allowed = False
    for rule in access:
        if rule.public or (caller.key_id and caller.key_id in rule.key_ids):
            allowed = True
        elif caller.org_id and rule.organizations:
            org = session.get(Organization, caller.org_id)
            allowed = allowed or (org is not None and org.name in rule.organizations)
    if not allowed:
        raise AccessDenied(
            f"The endpoint {endpoint.slug!r} does not accept calls from this caller.",
            details={"endpoint": endpoint.slug},
        )
    return policies


def check_rate(endpoint: Endpoint, policies: list[Policy], caller: Caller) -> None:
    limits_ = [RateLimitConfig.model_validate(p.config) for p in policies if p.type == "rate_limit"]
    if not limits_:
        return
    limiter = _limiter(get_settings().resolved_redis_url())
    items: list[RateLimitItem] = []
    for rule in limits_:
        items += [
            RateLimitItemPerMinute(rule.requests_per_minute, namespace="rag-minute"),
            RateLimitItemPerHour(rule.requests_per_hour, namespace="rag-hour"),
        ]
    key = f"{endpoint.id}:{caller.identity}"
    for item in items:
        if not limiter.hit(item, key):
            reset, _ = limiter.get_window_stats(item, key)
            retry = max(1, math.ceil(reset - time.time()))
            raise EndpointRateLimited(
                f"Rate limit of {item.amount} requests per {item.GRANULARITY.name} on "
                f"{endpoint.slug!r} reached; retry in {retry} s.",
                headers={"Retry-After": str(retry)},
                details={"limit": item.amount, "per": item.GRANULARITY.name},
            )


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def budget(policies: list[Policy]) -> int | None:
    caps = [
        BudgetConfig.model_validate(p.config).tokens_per_day for p in policies if p.type == "budget"
    ]
    return min(caps) if caps else None


def check_budget(
    session: Session, endpoint: Endpoint, policies: list[Policy], caller: Caller
) -> None:
    cap = budget(policies)
    if cap is None:
        return
    used = repository.tokens_used(session, endpoint.id, caller.identity, _today())
    if used >= cap:
        raise BudgetExceeded(
            f"The daily token budget of {cap} on {endpoint.slug!r} is spent.",
            details={"tokens_per_day": cap, "used": used},
        )


def record(session: Session, endpoint: Endpoint, caller: Caller, tokens: int) -> None:
    repository.add_usage(session, endpoint.id, caller.identity, _today(), tokens)
