"""The assistants stack: a real Conveyor API subprocess and a real inference worker subprocess
serving the tiny chat model of the inference tests (``tests/inference/stack.py``), plus helpers
to create instances and to sign incoming webhooks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from inference.testing import Stack
from tests.conftest import OrgKey, make_org
from tests.inference.stack import start_stack


@pytest.fixture(scope="package")
def stack(migrated: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("assistant-models"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def tenant(stack: Stack) -> OrgKey:
    return make_org()


@pytest.fixture
def api(stack: Stack, tenant: OrgKey) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {tenant.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=60) as client:
        yield client


def create_instance(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"name": "helper", "model": "tiny", "max_tokens": 8, **fields}
    response = client.post("/v1/instances", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())
