"""A crawl run by a real crawl worker process (a ``celery worker`` subprocess) sends a
``job.completed`` webhook whose ``data`` is the job view every process shows: with the crawl's
top-level fields (``url``, ``mode``, ``pages_discovered``, ``pages_crawled``, ``pages_failed``),
as the API shows them. The view's extras are declared on the kind, not registered by importing
the API's crawl router, which a crawl worker never does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import standardwebhooks

from config.queues import WEBHOOKS
from jobs.service import validate_input
from store import jobs as job_store
from store.db import session_scope
from tests.api_contract.receiver import Receiver, start_receiver
from tests.helpers import WorkerProcess, wait_for_job
from tests.sites.site import GeneratedSite
from workers.app import celery_app

pytestmark = [pytest.mark.e2e]

CRAWL_FIELDS = ("url", "mode", "pages_discovered", "pages_crawled", "pages_failed")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = start_receiver()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


def _submit_to(queue: str, org_id: str, payload: dict[str, Any]) -> str:
    """Create a crawl job and send it to a private queue, so only this test's worker process
    runs it (the session's in-process worker, when running, consumes the shared queues)."""
    with session_scope() as session:
        job = job_store.insert_job(
            session, org_id=org_id, kind="crawl", input=validate_input("crawl", payload)
        )
        job_id = job.id
    celery_app.send_task("crawl.run", args=[job_id], queue=queue)
    return job_id


def test_crawl_workers_job_completed_webhook_carries_the_crawl_fields(
    client: Any, org: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings

    # Whichever worker delivers (this one or the session's in-process one) may reach the
    # receiver and the site: 127.0.0.1 on any port, never turning the guard off.
    monkeypatch.setattr(get_settings(), "crawl_allowed_hosts", "127.0.0.1")
    hook = client.post(
        "/v1/webhooks", json={"url": receiver.url, "events": ["job.completed"]}, headers=org.headers
    )
    assert hook.status_code == 201, hook.text
    secret = hook.json()["secret"]

    queue = f"crawl-hook-{uuid.uuid4().hex[:8]}"
    env = {"CONVEYOR_CRAWL_ALLOWED_HOSTS": "127.0.0.1"}
    worker = WorkerProcess([queue, WEBHOOKS], concurrency=1, env=env)
    try:
        with GeneratedSite(pages=8, traps=False) as site:
            payload = {"url": f"{site.base}/", "mode": "full", "max_pages": 5}
            job_id = _submit_to(queue, org.org_id, payload)
            job = wait_for_job(client, job_id, org.headers, timeout=120)
            deadline = time.monotonic() + 30
            while not receiver.requests and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        worker.stop()

    assert job["status"] == "completed", job
    assert receiver.requests, "no job.completed webhook arrived"
    (got,) = receiver.requests
    event = standardwebhooks.Webhook(secret).verify(got.body, got.headers)
    assert event["type"] == "job.completed"
    data = event["data"]
    assert data["id"] == job_id and data["status"] == "completed"
    assert {k: data[k] for k in CRAWL_FIELDS} == {k: job[k] for k in CRAWL_FIELDS}
    assert data["url"] == payload["url"] and data["mode"] == "full"
    assert data["pages_crawled"] >= 1
    assert data["pages_crawled"] == data["progress"]["pages_crawled"]
