"""Claim, complete, release and expire idempotency keys. Each function owns one short
transaction (the claim must be visible to concurrent duplicates before the request runs)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from common.timeutil import utcnow
from idempotency.models import IdempotencyKey
from store.db import session_scope

#: A claim still "processing" after this long belongs to a request whose process died.
ABANDONED_AFTER_SECONDS = 600


@dataclass(frozen=True)
class Claim:
    """``won``: run the request. Otherwise ``stored`` is the earlier row's state."""

    won: bool
    fingerprint_matches: bool = True
    completed: bool = False
    response_status: int | None = None
    response_headers: dict[str, Any] | None = None
    response_body: str | None = None


def claim(org_id: str, key: str, fingerprint: str, ttl_seconds: int) -> Claim:
    """Insert the key (the unique constraint picks one winner among concurrent duplicates)."""
    cutoff = utcnow() - timedelta(seconds=ttl_seconds)
    for _ in range(2):
        try:
            with session_scope() as session:
                session.add(IdempotencyKey(org_id=org_id, key=key, fingerprint=fingerprint))
            return Claim(won=True)
        except IntegrityError:
            pass
        with session_scope() as session:
            row = session.scalar(
                select(IdempotencyKey).where(
                    IdempotencyKey.org_id == org_id, IdempotencyKey.key == key
                )
            )
            if row is None:
                continue  # released meanwhile: try to claim again
            abandoned = row.status == "processing" and row.created_at < utcnow() - timedelta(
                seconds=ABANDONED_AFTER_SECONDS
            )
            if row.created_at < cutoff or abandoned:
                session.delete(row)  # expired, or its process died mid-request: claim afresh
                continue
            return Claim(
                won=False,
                fingerprint_matches=row.fingerprint == fingerprint,
                completed=row.status == "completed",
                response_status=row.response_status,
                response_headers=row.response_headers,
                response_body=row.response_body,
            )
    return Claim(won=False, fingerprint_matches=True, completed=False)


def complete(org_id: str, key: str, status: int, headers: dict[str, str], body: str) -> None:
    with session_scope() as session:
        row = session.scalar(
            select(IdempotencyKey).where(IdempotencyKey.org_id == org_id, IdempotencyKey.key == key)
        )
        if row is not None:
            row.status = "completed"
            row.response_status = status
            row.response_headers = headers
            row.response_body = body


def release(org_id: str, key: str) -> None:
    """Forget a claim whose request must be retryable (5xx, 429, an interrupted request …)."""
    with session_scope() as session:
        session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.org_id == org_id, IdempotencyKey.key == key)
        )


def purge_expired(ttl_seconds: int) -> int:
    """Delete keys older than the TTL (a maintenance beat task calls this)."""
    cutoff = utcnow() - timedelta(seconds=ttl_seconds)
    with session_scope() as session:
        result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
        return int(getattr(result, "rowcount", 0) or 0)
