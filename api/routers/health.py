"""``GET /v1/health``: the store and the broker are checked; 503 when either is down."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from sqlalchemy import text

from api.schemas import ERROR_RESPONSES
from common.errors import Unavailable
from config import get_settings
from store.db import session_scope
from tasks.maintenance import queue_health

router = APIRouter(prefix="/v1", tags=["health"])


@router.get("/health", summary="Health of the store and the broker", responses=ERROR_RESPONSES)
def health() -> dict[str, Any]:
    problems: dict[str, str] = {}
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        problems["store"] = type(exc).__name__
    queues: dict[str, Any] = {}
    try:
        client = redis.Redis.from_url(
            get_settings().resolved_broker_url(), socket_connect_timeout=2, socket_timeout=2
        )
        client.ping()
        queues = queue_health()
    except redis.RedisError as exc:
        problems["broker"] = type(exc).__name__
    if problems:
        raise Unavailable(
            f"Unavailable: {', '.join(problems)} not reachable.",
            details=problems,
            headers={"Retry-After": "5"},
        )
    return {"status": "ok", "store": "ok", "broker": "ok", "queues": queues}
