"""Forward OpenAI-shaped requests to a deployment's replicas: raw bytes both ways, streaming kept.

The proxy hop is the per-request cost a deployment adds, so it does as little as it can: the
request body goes to the replica as the bytes the client sent (nothing re-parsed or
re-serialised), the replica's answer comes back as its own bytes (SSE relayed chunk by chunk as it
arrives, never buffered), and one `aiohttp.ClientSession` per event loop keeps keep-alive
connections to the replicas (its C HTTP parser costs a fraction of a pure-Python client's CPU per
request). Replicas are taken in turn (round robin); one that refuses the connection is skipped
for the next; when none can be reached `ReplicaUnreachable` is raised and the caller answers 503
with Retry-After.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp

_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
    weakref.WeakKeyDictionary()
)
_counter = itertools.count()
_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d+)')
#: Headers of the replica's answer that reach the client (hop-by-hop and framing ones do not).
RELAYED_HEADERS = ("content-type",)

KEEPALIVE_SECONDS = 4.0

Finish = Callable[[float, int, bool], None]


class ReplicaUnreachable(Exception):
    """No answer from the replica (refused, reset, timed out before the response started)."""


def session(timeout: float) -> aiohttp.ClientSession:
    """This event loop's client session (created on first use, kept for the loop's life)."""
    loop = asyncio.get_running_loop()
    found = _sessions.get(loop)
    if found is None or found.closed:
        found = aiohttp.ClientSession(
            # Idle connections are dropped before a replica's server would close them (uvicorn
            # and vLLM keep idle connections 5 s): reusing one it is closing fails the request.
            connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=KEEPALIVE_SECONDS),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=timeout),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            trust_env=False,
        )
        _sessions[loop] = found
    return found


async def close_sessions() -> None:
    """Close this loop's session (app shutdown, tests)."""
    found = _sessions.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.close()


def usage_tokens(body: bytes) -> int:
    """Tokens a non-streamed OpenAI response reports (0 when it does not say), without parsing
    the whole body: the metrics only need this one number."""
    found = _TOTAL_TOKENS.search(body)
    return int(found.group(1)) if found else 0


@dataclass
class Upstream:
    """A replica's response being relayed; `finish` records metrics once it is done."""

    response: aiohttp.ClientResponse
    started: float
    finish: Finish

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def content_type(self) -> str:
        return self.response.headers.get("content-type", "application/json")

    @property
    def streaming(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    async def body(self) -> bytes:
        try:
            content = await self.response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.finish(self._elapsed(), 0, True)
            raise ReplicaUnreachable(str(exc) or type(exc).__name__) from exc
        finally:
            self.response.release()
        self.finish(self._elapsed(), usage_tokens(content), self.status >= 400)
        return content

    async def stream(self) -> AsyncIterator[bytes]:
        events = 0
        failed = self.status >= 400
        try:
            async for chunk in self.response.content.iter_any():
                events += chunk.count(b"data: ")
                yield chunk
        except (aiohttp.ClientError, TimeoutError):
            failed = True  # the replica went away mid-stream: the client sees the stream end
        finally:
            self.response.release()
            # A stream's events approximate its completion tokens (one per event, minus [DONE]).
            self.finish(self._elapsed(), max(0, events - 1), failed)

    def _elapsed(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0


async def send(
    endpoints: list[str], path: str, body: bytes, *, timeout: float, finish: Finish
) -> Upstream:
    """POST `body` (the client's bytes) to the next replica; the caller reads the response.

    A replica that refuses the connection (nothing was sent) is skipped for the next one.
    """
    first = next(_counter)
    for attempt in range(len(endpoints)):
        endpoint = endpoints[(first + attempt) % len(endpoints)]
        started = time.perf_counter()
        try:
            response = await session(timeout).post(
                f"{endpoint}{path}", data=body, headers={"Content-Type": "application/json"}
            )
        except aiohttp.ClientConnectorError as exc:
            if attempt + 1 < len(endpoints):
                continue
            raise ReplicaUnreachable(str(exc) or type(exc).__name__) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ReplicaUnreachable(str(exc) or type(exc).__name__) from exc
        return Upstream(response=response, started=started, finish=finish)
    raise ReplicaUnreachable("no replica to send to")
