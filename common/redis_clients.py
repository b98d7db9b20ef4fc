"""The process's Redis clients: one per URL (sync) and one per URL and event loop (async).

Created on first use, never on import; ``close_clients()`` (worker shutdown) and
``aclose_clients()`` (the API's lifespan, on its loop) close them. An async client's
connections belong to the loop that made them, so each loop has its own. The default URL is
``Settings.resolved_redis_url()``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref

import redis
import redis.asyncio

from config import get_settings

#: A short connect timeout, so a health check or a request fails fast when Redis is down.
CONNECT_TIMEOUT_S = 2.0
#: One event loop's connections to one Redis: redis-py's asyncio default (100) is reached by a
#: worker running 100 inference jobs (its relay writes and cancel checks) or a busy API.
ASYNC_MAX_CONNECTIONS = 4096
#: Sync calls never block for long (the async clients' reads may block on purpose: XREAD).
SOCKET_TIMEOUT_S = 5.0

_lock = threading.Lock()
_sync: dict[str, redis.Redis] = {}
_sync_pid = 0
_async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, redis.asyncio.Redis]] = (
    weakref.WeakKeyDictionary()
)


def client(url: str | None = None) -> redis.Redis:
    """This process's client for ``url`` (default: the platform's Redis); replies are bytes."""
    global _sync_pid
    url = url or get_settings().resolved_redis_url()
    with _lock:
        if _sync_pid != os.getpid():  # a forked child opens its own connections
            _sync.clear()
            _sync_pid = os.getpid()
        found = _sync.get(url)
        if found is None:
            found = _sync[url] = redis.Redis.from_url(
                url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S
            )
        return found


def async_client(url: str | None = None) -> redis.asyncio.Redis:
    """The running event loop's client for ``url`` (default: the platform's Redis)."""
    url = url or get_settings().resolved_redis_url()
    loop = asyncio.get_running_loop()
    with _lock:
        clients = _async.setdefault(loop, {})
        found = clients.get(url)
        if found is None:
            found = clients[url] = redis.asyncio.Redis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                max_connections=ASYNC_MAX_CONNECTIONS,
            )
        return found


def close_clients() -> None:
    """Close the sync clients and forget every loop's async ones (worker shutdown)."""
    with _lock:
        clients = list(_sync.values()) if _sync_pid == os.getpid() else []
        _sync.clear()
        _async.clear()
    for found in clients:
        found.close()


async def aclose_clients() -> None:
    """Close the running loop's async clients (the API's lifespan; an engine loop's close)."""
    with _lock:
        clients = list(_async.pop(asyncio.get_running_loop(), {}).values())
    for found in clients:
        await found.aclose()
