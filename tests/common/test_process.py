"""Per-process resources (common.process) and Redis clients (common.redis_clients)."""

from __future__ import annotations

import asyncio

from common import process, redis_clients
from common.process import ProcessResource


def test_a_resource_is_created_once_on_first_use_and_closed_by_close_all() -> None:
    made: list[list[str]] = []
    closed: list[str] = []

    def make(name: str) -> ProcessResource[list[str]]:
        def create() -> list[str]:
            made.append([name])
            return made[-1]

        return ProcessResource(name, create, lambda value: closed.append(value[0]))

    first, second = make("first"), make("second")
    assert not first.opened
    assert first.get() is first.get() and len(made) == 1
    second.start()
    process.close_all()
    assert closed == ["second", "first"]  # newest first
    assert not first.opened and not second.opened
    assert first.get() is not made[0]  # a new one after close


def test_an_installed_value_is_used_and_closed() -> None:
    closed: list[str] = []
    resource = ProcessResource("x", lambda: "made", closed.append)
    resource.install("installed")
    assert resource.get() == "installed"
    resource.close()
    assert closed == ["installed"]


def test_one_sync_client_per_url_and_one_async_client_per_loop() -> None:
    url = "redis://127.0.0.1:6379/15"
    assert redis_clients.client(url) is redis_clients.client(url)
    assert redis_clients.client(url) is not redis_clients.client("redis://127.0.0.1:6379/14")

    async def on_a_loop() -> tuple[object, object]:
        first = redis_clients.async_client(url)
        assert redis_clients.async_client(url) is first
        await redis_clients.aclose_clients()
        return first, redis_clients.async_client(url)

    first, after_close = asyncio.run(on_a_loop())
    other_loop, _ = asyncio.run(on_a_loop())
    assert first is not after_close and other_loop is not first
    redis_clients.close_clients()
