"""The assistants stack: a real Conveyor API subprocess and a real inference worker subprocess
serving the tiny chat model of the inference tests (``tests/inference/stack.py``), plus helpers
to create instances and to sign incoming webhooks."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from inference.testing import Stack, free_port
from tests.conftest import OrgKey, make_org
from tests.helpers import ServiceProcess
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


def billed_tokens(org_id: str, total: tuple[int, int], timeout: float = 60.0) -> dict[str, int]:
    """The organisation's ``tokens_in``/``tokens_out`` usage events by ``meter:model``, once their
    sum is ``total`` (prompt, completion): they are written with each job's terminal transition,
    which may come a moment after the client has its answer."""
    from sqlalchemy import func, select

    from billing.models import UsageEvent
    from store.db import session_scope

    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as session:
            rows = session.execute(
                select(UsageEvent.meter, UsageEvent.dimension, func.sum(UsageEvent.quantity))
                .where(
                    UsageEvent.org_id == org_id, UsageEvent.meter.in_(("tokens_in", "tokens_out"))
                )
                .group_by(UsageEvent.meter, UsageEvent.dimension)
            ).all()
        billed = {f"{meter}:{model}": int(quantity) for meter, model, quantity in rows}
        sums = tuple(
            sum(q for k, q in billed.items() if k.startswith(m))
            for m in ("tokens_in", "tokens_out")
        )
        if sums == total or time.monotonic() > deadline:
            return billed
        time.sleep(0.2)


@pytest.fixture
def replica(stack: Stack, tmp_path: Any) -> Iterator[str]:
    """A real model server (``inference.server``) serving the tiny model: a deployment replica."""
    port = free_port()
    model = stack.env["CONVEYOR_MODELS"].split(",")[0].split("=", 1)[1]
    cmd = [sys.executable, "-m", "inference.server", "--model", f"my-llm={model}"]
    cmd += ["--port", str(port), "--device", "cpu", "--log-level", "warning"]
    env = {**stack.env, "CONVEYOR_INFERENCE_DEFAULT_EMBEDDING": "false"}
    proc = ServiceProcess(cmd, env=env, log=tmp_path / "replica.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    try:
        yield url
    finally:
        proc.stop()


def add_deployment(tenant: OrgKey, name: str, **fields: Any) -> None:
    """A deployment row of the tenant (the model deployments' own machinery is not needed)."""
    from deployments.models import Deployment
    from store.db import session_scope

    row = {
        "org_id": tenant.org_id,
        "name": name,
        "model": "tiny",
        "model_path": "/models/tiny",
        "runtime": "transformers",
        "backend": "local",
        "status": "running",
        "ready_replicas": 1,
        **fields,
    }
    with session_scope() as session:
        session.add(Deployment(**row))
