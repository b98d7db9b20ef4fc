"""Model calls of a query: the question's embedding and the answer.

Conveyor's models are reached the way ``/v1/embeddings`` and ``/v1/chat/completions`` reach
them: an ``inference`` job (created by ``jobs.service.create_job``, sent after its commit) whose
worker holds the model and relays the body back through Redis (``inference.relay``); no model
is loaded in the API. An ``openai_compatible`` provider is called over HTTP after the SSRF guard
(``common.urlsafety``) cleared its address.
"""

from __future__ import annotations

import asyncio
import json
import time
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


async def call_inference(org_id: str, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    """Run one inference request on the inference queue and return its OpenAI-shaped body."""
    job_id = await asyncio.to_thread(_create_inference_job, org_id, operation, body)
    redis = redis_clients.async_client()
    deadline = time.monotonic() + get_settings().rag_inference_timeout_seconds
    after = "0"
    while time.monotonic() < deadline:
        for event in await relay.read(redis, job_id, after, block_ms=250):
            after = event.id
            if event.type == "result":
                result: dict[str, Any] = event.json()
                return result
            if event.type == "error":
                error = event.json().get("error", {})
                raise ModelCallFailed(
                    f"The model refused the request: {error.get('message', 'error')}",
                    details={"job_id": job_id, "model": body.get("model")},
                )
    await relay.request_cancel(redis, job_id)
    raise ModelCallFailed("No inference worker answered in time.", details={"job_id": job_id})


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


async def _remote_chat(provider: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    url = provider["base_url"].rstrip("/") + "/chat/completions"
    await check_url_async(url, get_settings().crawl_allowed_hosts)
    headers = {"Authorization": f"Bearer {provider['api_key']}"} if provider.get("api_key") else {}
    try:
        async with httpx.AsyncClient(timeout=60, follow_redirects=False) as client:
            response = await client.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise ModelCallFailed(f"The provider {provider['name']!r} did not answer: {exc}") from exc
    if response.status_code >= 400:
        raise ModelCallFailed(
            f"The provider {provider['name']!r} answered {response.status_code}.",
            details={"status": response.status_code, "body": response.text[:500]},
        )
    try:
        result: dict[str, Any] = response.json()
    except json.JSONDecodeError as exc:
        raise ModelCallFailed(f"The provider {provider['name']!r} sent no JSON.") from exc
    return result
