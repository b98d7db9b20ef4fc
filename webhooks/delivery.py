"""One webhook delivery attempt over HTTP, and the retry schedule between attempts.

:func:`deliver` signs and POSTs one message and reports what happened without raising for
remote failures; the caller (the ``webhooks`` queue task) records the attempt and decides, from
:attr:`DeliveryOutcome.retryable` and :func:`retry_delay`, whether and when to try again.
Redirects are never followed (a redirect could lead to an address the URL guard refused), and the
target URL goes through the caller's URL guard (the crawler's SSRF check) before any connection.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from common.errors import UnsafeURL
from webhooks.signing import signature_headers

#: Attempts in all: the first delivery plus five retries.
DEFAULT_MAX_ATTEMPTS = 6
#: Delay before retry n (1-based) is ``base * factor ** (n - 1)``: 10 s, 40 s, 160 s, 640 s,
#: 2560 s, i.e. five retries over about 57 minutes.
DEFAULT_BACKOFF_BASE_SECONDS = 10.0
DEFAULT_BACKOFF_FACTOR = 4.0
DEFAULT_JITTER = 0.1
#: How much of the receiver's answer is kept in the delivery log.
RESPONSE_SNIPPET_BYTES = 1024
USER_AGENT = "Conveyor-Webhooks/1"

UrlGuard = Callable[[str], None]
"""Raises (any exception) when a target URL must not be contacted; returns None when it may."""


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt did: ``ok`` on any 2xx; ``retryable`` when trying later may help."""

    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int
    response_snippet: str
    retryable: bool


def retry_delay(
    retry_number: int,
    *,
    base: float = DEFAULT_BACKOFF_BASE_SECONDS,
    factor: float = DEFAULT_BACKOFF_FACTOR,
    jitter: float = DEFAULT_JITTER,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry ``retry_number`` (1 for the first retry), with ±jitter."""
    if retry_number < 1:
        raise ValueError("retry_number starts at 1")
    delay = base * factor ** (retry_number - 1)
    spread = (rng or random).uniform(-jitter, jitter) if jitter else 0.0
    return delay * (1.0 + spread)


def retry_schedule(
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    *,
    base: float = DEFAULT_BACKOFF_BASE_SECONDS,
    factor: float = DEFAULT_BACKOFF_FACTOR,
) -> list[float]:
    """The nominal (jitter-free) delays before each retry, for docs and tests."""
    return [retry_delay(n, base=base, factor=factor, jitter=0.0) for n in range(1, max_attempts)]


def encode_payload(event_type: str, timestamp: str, data: Mapping[str, Any]) -> bytes:
    """The delivery body: ``{"type", "timestamp", "data"}`` as compact UTF-8 JSON."""
    body = {"type": event_type, "timestamp": timestamp, "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _is_retryable_status(status: int) -> bool:
    # 4xx other than timeouts/throttling means the receiver rejected the message itself;
    # sending the same bytes again will not change its mind.
    return status >= 500 or status in (408, 425, 429)


def deliver(
    client: httpx.Client,
    url: str,
    secret: str,
    msg_id: str,
    body: bytes,
    *,
    url_guard: UrlGuard | None = None,
    timestamp: int | None = None,
    timeout: float = 10.0,
) -> DeliveryOutcome:
    """Sign ``body`` and POST it to ``url`` once; never raises for a remote failure."""
    started = time.monotonic()

    def outcome(
        ok: bool, status: int | None, error: str | None, snippet: str, retryable: bool
    ) -> DeliveryOutcome:
        elapsed = int((time.monotonic() - started) * 1000)
        return DeliveryOutcome(ok, status, error, elapsed, snippet, retryable)

    if url_guard is not None:
        try:
            url_guard(url)
        except Exception as exc:  # the guard's own error type is not ours to know
            return outcome(False, None, f"unsafe_url: {exc}", "", False)
    sent_at = int(time.time()) if timestamp is None else timestamp
    headers = signature_headers(secret, msg_id, sent_at, body)
    headers["user-agent"] = USER_AGENT
    try:
        with client.stream(
            "POST", url, content=body, headers=headers, timeout=timeout, follow_redirects=False
        ) as response:
            snippet = _read_snippet(response)
            status = response.status_code
    except httpx.TimeoutException:
        return outcome(False, None, "timeout", "", True)
    except httpx.TransportError as exc:
        return outcome(False, None, f"connection_error: {type(exc).__name__}", "", True)
    except httpx.InvalidURL as exc:
        return outcome(False, None, f"invalid_url: {exc}", "", False)
    except UnsafeURL as exc:  # the guarded transport refused the resolved address
        return outcome(False, None, f"unsafe_url: {exc}", "", False)
    if 200 <= status < 300:
        return outcome(True, status, None, snippet, False)
    return outcome(False, status, f"http_{status}", snippet, _is_retryable_status(status))


def _read_snippet(response: httpx.Response) -> str:
    """The first bytes of the answer only: a hostile receiver cannot make us buffer megabytes."""
    collected = b""
    for chunk in response.iter_bytes():
        collected += chunk
        if len(collected) >= RESPONSE_SNIPPET_BYTES:
            break
    return collected[:RESPONSE_SNIPPET_BYTES].decode("utf-8", errors="replace")
