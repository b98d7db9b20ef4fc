"""OpenAI's Batch API, with the official ``openai`` client exactly as OpenAI's documentation
writes the workflow (``files.create`` → ``batches.create`` → poll ``batches.retrieve`` →
``files.content``), against a real Conveyor API subprocess and inference worker (tiny model)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from inference.testing import Stack
from tests.conftest import OrgKey, make_org
from tests.inference.stack import start_stack

pytestmark = pytest.mark.e2e

MESSAGES: list[Any] = [{"role": "user", "content": "Hello world!"}]


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
def client(stack: Stack, tenant: OrgKey) -> OpenAI:
    return OpenAI(base_url=f"{stack.url}/v1", api_key=tenant.key, max_retries=0)


def _write_input(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def _line(custom_id: str, max_tokens: int, model: str = "tiny") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": MESSAGES, "max_tokens": max_tokens},
    }


def test_the_documented_batch_workflow(client: OpenAI, tmp_path: Path) -> None:
    lines = [_line("request-1", 5), _line("request-2", 6), _line("too-long", 5000)]
    path = _write_input(tmp_path / "batchinput.jsonl", lines)

    # 1. Upload the batch input file.
    with open(path, "rb") as batchinput:
        batch_input_file = client.files.create(file=batchinput, purpose="batch")
    assert batch_input_file.id.startswith("file-") and batch_input_file.purpose == "batch"

    # 2. Create the batch.
    batch_input_file_id = batch_input_file.id
    created = client.batches.create(
        input_file_id=batch_input_file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"description": "nightly eval job"},
    )

    # 3. Check the status of the batch until it is done.
    deadline = time.monotonic() + 120
    batch = client.batches.retrieve(created.id)
    assert batch.object == "batch" and batch.status in ("validating", "in_progress", "completed")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
        batch = client.batches.retrieve(created.id)
    assert batch.status == "completed", batch
    assert batch.input_file_id == batch_input_file_id
    assert batch.endpoint == "/v1/chat/completions" and batch.completion_window == "24h"
    assert batch.metadata == {"description": "nightly eval job"}
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (3, 2)
    assert batch.request_counts.failed == 1
    assert batch.created_at <= (batch.in_progress_at or 0) <= (batch.completed_at or 0)
    assert batch.output_file_id and batch.error_file_id

    # 4. Retrieve the results.
    file_response = client.files.content(batch.output_file_id)
    outputs = [json.loads(row) for row in file_response.text.splitlines()]
    assert sorted(o["custom_id"] for o in outputs) == ["request-1", "request-2"]
    for output in outputs:
        assert output["error"] is None and output["response"]["status_code"] == 200
        assert output["response"]["body"]["object"] == "chat.completion"
    errors = [
        json.loads(row) for row in client.files.content(batch.error_file_id).text.splitlines()
    ]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("too-long", "context_length_exceeded")
    ]

    # Files: retrieve, list, delete (a batch's output file is its result).
    output_file = client.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output"
    assert output_file.bytes == len(file_response.content)
    listed = {f.id: f for f in client.files.list()}
    assert {batch_input_file_id, batch.output_file_id, batch.error_file_id} <= set(listed)
    assert client.files.retrieve(batch_input_file_id).bytes == path.stat().st_size
    assert client.files.content(batch_input_file_id).text == path.read_text()
    assert client.files.delete(batch_input_file_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(batch_input_file_id)
    assert client.files.delete(batch.output_file_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.content(batch.output_file_id)
    assert client.batches.retrieve(batch.id).output_file_id is None


def test_list_and_cancel(stack: Stack, tmp_path: Path) -> None:
    client = OpenAI(base_url=f"{stack.url}/v1", api_key=make_org().key, max_retries=0)
    ids = [
        client.batches.create(
            input_file_id=client.files.create(
                file=_write_input(tmp_path / f"in{i}.jsonl", [_line(f"r{i}", 2)]),
                purpose="batch",
            ).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        ).id
        for i in range(3)
    ]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more is True
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == [ids[0]] and rest.has_more is False
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # auto-paging

    slow = [_line(f"slow-{i}", 900, model="slow") for i in range(4)]
    long_batch = client.batches.create(
        input_file_id=client.files.create(
            file=_write_input(tmp_path / "slow.jsonl", slow), purpose="batch"
        ).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    cancelled = client.batches.cancel(long_batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    time.sleep(2)
    again = client.batches.retrieve(long_batch.id)
    assert again.status == "cancelled" and again.output_file_id is None
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("not-a-batch")
