"""Model calls of a query: the question's embedding and the answer.

Conveyor's models are reached the way ``/v1/embeddings`` and ``/v1/chat/completions`` reach
them: an ``inference`` job (created by ``jobs.service.create_job``, sent after its commit) whose
worker holds the model and relays the body back through Redis (``inference.relay``); no model
is loaded in the API. An ``openai_compatible`` provider is called over HTTP after the SSRF guard
(``common.urlsafety``) cleared its address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
import numpy as np

from common import redis_clients
from common.urlsafety import check_url_async
from config import get_settings
from inference import relay
from jobs.service import create_job
from rag.backends.base import Vector
from rag.errors import ModelCallFailed
from store.db import session_scope
from workers import outbox


def _create_inference_job(org_id: str, operation: str, body: dict[str, Any]) -> str:
    with session_scope() as db:
        db.info[outbox.ON_SEND_FAILURE] = "reject"
        payload = {"operation": operation, "body": body, "relay": True}
        return str(create_job(db, "inference", org_id, payload, quota=False).id)


async def _relay_events(
    org_id: str, operation: str, body: dict[str, Any]
) -> AsyncGenerator[Any, None]:
    """The relay events of one inference job (``chunk``, ``result``; an ``error`` raises), until
    its ``result`` or ``end``. A job left unfinished (timeout, reader gone) is cancelled."""
    job_id = await asyncio.to_thread(_create_inference_job, org_id, operation, body)
    redis = redis_clients.async_client()
    timeout = get_settings().rag_inference_timeout_seconds
    deadline = time.monotonic() + timeout
    after = "0"
    finished = False
    try:
        while time.monotonic() < deadline:
            for event in await relay.read(redis, job_id, after, block_ms=250):
                after = event.id
                deadline = time.monotonic() + timeout  # the worker is alive: wait again
                if event.type == "error":
                    finished = True
                    error = event.json().get("error", {})
                    raise ModelCallFailed(
                        f"The model refused the request: {error.get('message', 'error')}",
                        details={"job_id": job_id, "model": body.get("model")},
                    )
                finished = event.type in ("result", "end")
                if event.type in ("chunk", "result"):
                    yield event
                if finished:
                    return
        raise ModelCallFailed("No inference worker answered in time.", details={"job_id": job_id})
    finally:
        if not finished:
            with contextlib.suppress(Exception):
                await asyncio.shield(relay.request_cancel(redis, job_id))


async def call_inference(org_id: str, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    """Run one inference request on the inference queue and return its OpenAI-shaped body."""
    async with contextlib.aclosing(_relay_events(org_id, operation, body)) as events:
        async for event in events:
            if event.type == "result":
                result: dict[str, Any] = event.json()
                return result
    raise ModelCallFailed("The inference worker ended without an answer.")


async def embed_query(org_id: str, model: str, text: str) -> tuple[Vector, int]:
    body = await call_inference(org_id, "embeddings", {"model": model, "input": [text]})
    vector = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
    return vector, int(body.get("usage", {}).get("prompt_tokens", 0))


async def chat(
    org_id: str,
    model: str,
    messages: list[dict[str, str]],
    *,
    max_tokens: int,
    temperature: float,
    provider: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An OpenAI chat completion body from Conveyor's model or the endpoint's provider."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    if provider is None or provider["kind"] == "conveyor":
        return await call_inference(org_id, "chat.completions", body)
    return await _remote_chat(provider, body)


async def chat_stream(
    org_id: str,
    model: str,
    messages: list[dict[str, str]],
    *,
    max_tokens: int,
    temperature: float,
    provider: dict[str, Any] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """The answer's OpenAI ``chat.completion.chunk`` documents as the model generates them: from
    the inference worker's token relay (the path ``/v1/chat/completions`` streams on), or from
    the provider's own SSE stream. The last usage-bearing chunk carries ``usage``."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if provider is None or provider["kind"] == "conveyor":
        async for event in _relay_events(org_id, "chat.completions", body):
            for line in event.data.split("\n") if event.type == "chunk" else []:
                if line:
                    yield json.loads(line)
        return
    async for chunk in _remote_chat_stream(provider, body):
        yield chunk


async def _remote_chat_stream(
    provider: dict[str, Any], body: dict[str, Any]
) -> AsyncIterator[dict[str, Any]]:
    url, headers = await _provider_call(provider)
    try:
        async with (
            httpx.AsyncClient(timeout=60, follow_redirects=False) as client,
            client.stream("POST", url, json=body, headers=headers) as response,
        ):
            if response.status_code >= 400:
                await response.aread()
                raise _refused(provider, response)
            async for line in response.aiter_lines():
                data = line.removeprefix("data:").strip() if line.startswith("data:") else ""
                if data == "[DONE]":
                    return
                if data:
                    try:
                        yield json.loads(data)
                    except json.JSONDecodeError as exc:
                        raise ModelCallFailed(
                            f"The provider {provider['name']!r} sent an event that is not JSON."
                        ) from exc
    except httpx.HTTPError as exc:
        raise ModelCallFailed(f"The provider {provider['name']!r} did not answer: {exc}") from exc


async def _provider_call(provider: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The provider's chat URL (cleared by the SSRF guard) and its auth header."""
    url = provider["base_url"].rstrip("/") + "/chat/completions"
    await check_url_async(url, get_settings().crawl_allowed_hosts)
    headers = {"Authorization": f"Bearer {provider['api_key']}"} if provider.get("api_key") else {}
    return url, headers


def _refused(provider: dict[str, Any], response: httpx.Response) -> ModelCallFailed:
    return ModelCallFailed(
        f"The provider {provider['name']!r} answered {response.status_code}.",
        details={"status": response.status_code, "body": response.text[:500]},
    )


async def _remote_chat(provider: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    url, headers = await _provider_call(provider)
    try:
        async with httpx.AsyncClient(timeout=60, follow_redirects=False) as client:
            response = await client.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise ModelCallFailed(f"The provider {provider['name']!r} did not answer: {exc}") from exc
    if response.status_code >= 400:
        raise _refused(provider, response)
    try:
        result: dict[str, Any] = response.json()
    except json.JSONDecodeError as exc:
        raise ModelCallFailed(f"The provider {provider['name']!r} sent no JSON.") from exc
    return result
