"""``GET /v1/health``: the store and the broker are checked; 503 when either is down."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from sqlalchemy import text

from api import access
from api.schemas import ERROR_RESPONSES
from common import redis_clients
from common.errors import Unavailable
from config import get_settings
from store.db import session_scope
from tasks.maintenance import queue_health

router = APIRouter(tags=["health"], dependencies=[access.public_route()])


@router.get("/", summary="Where things are: the API docs, health, Flower")
def index() -> dict[str, Any]:
    """A small index of links, so the API's root answers something useful (no key needed)."""
    settings = get_settings()
    return {
        "name": "Conveyor",
        "links": {
            "docs": "/docs",
            "redoc": "/redoc",
            "openapi": "/openapi.json",
            "health": "/v1/health",
            "jobs": "/v1/jobs",
            "flower": f"http://127.0.0.1:{settings.flower_port}/",
        },
    }


@router.get("/v1/health", summary="Health of the store and the broker", responses=ERROR_RESPONSES)
def health() -> dict[str, Any]:
    problems: dict[str, str] = {}
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        problems["store"] = type(exc).__name__
    queues: dict[str, Any] = {}
    try:
        redis_clients.client(get_settings().resolved_broker_url()).ping()
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
