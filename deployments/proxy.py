"""Forward OpenAI-shaped requests to a deployment's replicas (round robin, streaming kept).

One `httpx.AsyncClient` per event loop holds the connection pool to the replicas. Responses
are relayed as they arrive (SSE included) without buffering a stream in memory.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx

_clients: dict[int, httpx.AsyncClient] = {}
_counter = itertools.count()


def client(timeout: float) -> httpx.AsyncClient:
    loop_id = id(asyncio.get_running_loop())
    found = _clients.get(loop_id)
    if found is None:
        found = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
            trust_env=False,
        )
        _clients[loop_id] = found
    return found


def pick(endpoints: list[str]) -> str:
    """Round robin over the ready replicas."""
    return endpoints[next(_counter) % len(endpoints)]


def usage_tokens(body: bytes) -> int:
    """Tokens a non-streamed OpenAI response reports (0 when it does not say)."""
    try:
        usage = json.loads(body).get("usage") or {}
    except (ValueError, AttributeError):
        return 0
    return int(usage.get("total_tokens") or 0)


@dataclass
class Upstream:
    """An upstream response being relayed; `finish` records metrics when it is done."""

    response: httpx.Response
    started: float
    finish: Callable[[float, int, bool], Awaitable[None]]

    @property
    def streaming(self) -> bool:
        content_type = str(self.response.headers.get("content-type", ""))
        return content_type.startswith("text/event-stream")

    async def body(self) -> bytes:
        try:
            content = await self.response.aread()
        finally:
            await self.response.aclose()
        await self.finish(self._elapsed(), usage_tokens(content), self.response.is_error)
        return content

    async def stream(self) -> AsyncIterator[bytes]:
        chunks = 0
        try:
            async for chunk in self.response.aiter_raw():
                chunks += chunk.count(b"data: ")
                yield chunk
        finally:
            await self.response.aclose()
            # A stream's chunks approximate its completion tokens (one per event, minus [DONE]).
            await self.finish(self._elapsed(), max(0, chunks - 1), self.response.is_error)

    def _elapsed(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0


async def send(
    endpoint: str,
    path: str,
    body: bytes,
    *,
    timeout: float,
    finish: Callable[[float, int, bool], Awaitable[None]],
) -> Upstream:
    """POST `body` to the replica; raises httpx.HTTPError when it cannot be reached."""
    started = time.perf_counter()
    http = client(timeout)
    request = http.build_request(
        "POST", f"{endpoint}{path}", content=body, headers={"content-type": "application/json"}
    )
    response = await http.send(request, stream=True)
    return Upstream(response=response, started=started, finish=finish)
