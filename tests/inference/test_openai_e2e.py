"""The official ``openai`` client against a real Conveyor API subprocess and a real inference
worker subprocess (threads pool) serving a tiny GPT-2 and the packaged MiniLM."""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from inference.testing import Stack
from tests.conftest import OrgKey, make_org
from tests.inference.stack import start_stack

pytestmark = pytest.mark.e2e

MESSAGES: list[Any] = [{"role": "user", "content": "What is the answer?"}]


@pytest.fixture(scope="module")
def stack(migrated: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("models"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def tenant(stack: Stack) -> OrgKey:
    return make_org()


@pytest.fixture(scope="module")
def ai(stack: Stack, tenant: OrgKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=tenant.key, max_retries=0)


def test_models_lists_chat_and_embedding_models(ai: openai.OpenAI) -> None:
    models = {m.id: m for m in ai.models.list()}
    assert {"tiny", "slow", "all-MiniLM-L6-v2"} <= set(models)
    assert models["tiny"].model_extra == {"kind": "chat"}
    assert models["all-MiniLM-L6-v2"].model_extra == {"kind": "embedding"}


def test_chat_completion_with_usage_recorded_per_org(
    ai: openai.OpenAI, tenant: OrgKey, stack: Stack
) -> None:
    first = ai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=9, seed=4)
    again = ai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=9, seed=4)
    choice = first.choices[0]
    assert first.object == "chat.completion"
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert choice.message.content == again.choices[0].message.content
    assert first.usage is not None
    assert first.usage.completion_tokens == 9
    assert first.usage.total_tokens == first.usage.prompt_tokens + 9

    from plans import repository
    from plans.service import period_key
    from store.db import session_scope

    def counters() -> tuple[int, int, int]:
        with session_scope() as session:
            return tuple(  # type: ignore[return-value]
                repository.get_counter(session, tenant.org_id, period_key(), metric)
                for metric in (
                    "inference_prompt_tokens",
                    "inference_completion_tokens",
                    "gpu_seconds",
                )
            )

    # Usage is recorded before the worker relays the body: it is there with the answer.
    prompt, completion, gpu = counters()
    assert prompt >= 2 * first.usage.prompt_tokens
    assert completion >= 18
    assert gpu >= 2
    # Each call's audit record is written with its job (one transaction), exactly once.
    log = httpx.get(
        f"{stack.url}/v1/audit-log",
        params={"limit": 200},
        headers={"Authorization": f"Bearer {tenant.key}"},
    ).json()["data"]
    chats = [r for r in log if r["action"] == "inference.completions"]
    assert len(chats) == 2, log
    assert all(r["status"] == 200 and r["actor"]["key_id"] for r in chats)


def test_chat_stream_relays_the_same_text(ai: openai.OpenAI) -> None:
    full = ai.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=24, seed=8, temperature=0.9
    )
    chunks = list(
        ai.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=24,
            seed=8,
            temperature=0.9,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 24


def test_stop_and_n(ai: openai.OpenAI) -> None:
    base = ai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=30, seed=2)
    text = base.choices[0].message.content or ""
    stop = text[8:11]
    cut = ai.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=30, seed=2, stop=[stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    many = ai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, n=3, seed=1)
    assert [c.index for c in many.choices] == [0, 1, 2]


def test_completions_plain_and_streamed(ai: openai.OpenAI) -> None:
    plain = ai.completions.create(
        model="tiny", prompt=["The quick", "Hello"], n=2, max_tokens=6, temperature=0
    )
    assert plain.object == "text_completion"
    assert [c.index for c in plain.choices] == [0, 1, 2, 3]
    assert plain.choices[0].text == plain.choices[1].text  # greedy: both samples agree
    assert plain.usage is not None and plain.usage.completion_tokens == 24
    streamed = ai.completions.create(
        model="tiny", prompt="The quick", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == plain.choices[0].text


def test_embeddings_are_semantically_ordered(ai: openai.OpenAI) -> None:
    texts = [
        "A cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "The central bank raised interest rates.",
    ]
    result = ai.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # base64 on the wire
    floats = ai.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
    cat, kitten, bank = (d.embedding for d in result.data)

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    assert len(cat) == 384
    assert cos(cat, kitten) > cos(cat, bank) + 0.3
    assert cos(cat, floats.data[0].embedding) > 0.9999
    assert result.usage.prompt_tokens > 10


def test_errors_carry_both_shapes(ai: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        ai.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    body: Any = missing.value.body
    assert body["type"] == "invalid_request_error"
    assert body["param"] == "model"
    assert body["request_id"].startswith("req_")

    with pytest.raises(openai.BadRequestError) as too_long:
        ai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1000)
    assert too_long.value.code == "context_length_exceeded"
    assert "256" in too_long.value.message
    assert too_long.value.body["details"]["limit"] == 256  # type: ignore[index]

    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        ai.chat.completions.create(model="tiny", messages=MESSAGES, temperature=5)
    assert invalid.value.code == "validation_error"
    assert invalid.value.body["param"] == "temperature"  # type: ignore[index]

    with pytest.raises(openai.BadRequestError):
        ai.embeddings.create(model="tiny", input="a chat model cannot embed")

    anonymous = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        anonymous.models.list()
    assert unauthorized.value.code == "unauthorized"


def test_async_request_returns_the_job(stack: Stack, tenant: OrgKey) -> None:
    with httpx.Client(base_url=stack.url, headers=tenant.headers, timeout=30) as http:
        body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "seed": 1}
        queued = http.post("/v1/chat/completions", json=body, headers={"Prefer": "respond-async"})
        assert queued.status_code == 202, queued.text
        job = queued.json()
        assert job["kind"] == "inference"
        assert http.post("/v1/chat/completions?async=true", json=body).status_code == 202
        result = _wait_result(http, job["id"])
        assert result["object"] == "chat.completion"
        assert result["usage"]["completion_tokens"] == 4


def test_batches_inline_and_from_an_uploaded_file(
    ai: openai.OpenAI, stack: Stack, tenant: OrgKey
) -> None:
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "tiny", "messages": MESSAGES, "max_tokens": 3 + i, "seed": i},
        }
        for i in range(4)
    ]
    lines.append(
        {
            "custom_id": "too-long",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "tiny", "messages": MESSAGES, "max_tokens": 5000},
        }
    )
    upload = ai.files.create(
        file=("batch.jsonl", io.BytesIO("\n".join(json.dumps(x) for x in lines).encode())),
        purpose="batch",
    )
    assert upload.id.startswith("file-")
    batch = ai.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with httpx.Client(base_url=stack.url, headers=tenant.headers, timeout=30) as http:
        inline = http.post("/v1/batches", json={"requests": lines[:2], "completion_window": "24h"})
        assert inline.status_code == 202, inline.text
        for job_id, expected in ((batch.id, lines), (inline.json()["id"], lines[:2])):
            output = _wait_result(http, job_id)
            job = http.get(f"/v1/jobs/{job_id}").json()
            failed = 1 if len(expected) == 5 else 0
            usage = {k: v for k, v in job["progress"].items() if k.startswith("usage_")}
            assert {k: v for k, v in job["progress"].items() if k not in usage} == {
                "requests_total": len(expected),
                "requests_completed": len(expected) - failed,
                "requests_failed": failed,
            }
            # The job's own usage counters (billing meters them): every line's tokens.
            # each answered request generated at least one token (max_tokens is an upper bound)
            assert usage["usage_completion_tokens"] >= len(expected) - failed
            by_id = {row["custom_id"]: row for row in output}
            assert set(by_id) == {x["custom_id"] for x in expected}
            assert by_id["q1"]["response"]["status_code"] == 200
            assert by_id["q1"]["response"]["body"]["usage"]["completion_tokens"] == 4
            if failed:
                assert by_id["too-long"]["error"]["code"] == "context_length_exceeded"


def test_client_disconnect_cancels_the_job(stack: Stack, tenant: OrgKey) -> None:
    body = {"model": "slow", "messages": MESSAGES, "max_tokens": 900, "stream": True}
    # A client of its own, closed after the first chunk: the connection really goes away.
    with (
        httpx.Client(base_url=stack.url, headers=tenant.headers, timeout=30) as leaving,
        leaving.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        job_id = response.headers["X-Conveyor-Job-Id"]
        for line in response.iter_lines():
            if line.startswith("data: "):
                break
    with httpx.Client(base_url=stack.url, headers=tenant.headers, timeout=30) as http:
        deadline = time.monotonic() + 20
        status = ""
        while time.monotonic() < deadline:
            status = http.get(f"/v1/jobs/{job_id}").json()["status"]
            if status == "cancelled":
                break
            time.sleep(0.1)
        assert status == "cancelled"
        # The worker stopped generating: a short request is answered at once.
        started = time.monotonic()
        quick = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2}
        assert http.post("/v1/chat/completions", json=quick).status_code == 200
        assert time.monotonic() - started < 5


def _wait_result(http: httpx.Client, job_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            assert job["status"] == "completed", job
            response = http.get(f"/v1/jobs/{job_id}/result")
            assert response.status_code == 200, response.text
            if "ndjson" in response.headers["content-type"]:
                return [json.loads(line) for line in response.text.splitlines() if line]
            return response.json()
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")
