"""Usage metered from what real workers ran: crawls (pages = the crawl's counters, static and
rendered apart), an inference chat (tokens = the response's ``usage``), and a crawl whose worker
is SIGKILLed mid-job (after the redelivery: one set of events, no page missing or twice)."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select

from billing.models import UsageRollup
from store.db import session_scope
from store.models import Job, ResultItem
from tests.billing.conftest import events_of
from tests.conftest import REDIS_BASE, _claim_redis_db, make_org
from tests.faults.harness import FAST_RECOVERY_ENV
from tests.helpers import ServiceProcess, wait_for_job
from tests.sites.site import GeneratedSite


def _by_meter(org_id: str) -> dict[tuple[str, str], int]:
    totals: Counter[tuple[str, str]] = Counter()
    for event in events_of(org_id):
        totals[(event.meter, event.dimension)] += event.quantity
    return dict(totals)


def _rollup_sum(org_id: str) -> int:
    with session_scope() as session:
        query = select(func.coalesce(func.sum(UsageRollup.quantity), 0)).where(
            UsageRollup.org_id == org_id
        )
        return int(session.scalar(query) or 0)


@pytest.mark.usefixtures("crawl_settings", "worker")
def test_crawls_are_metered_from_their_counters(client: Any, org: Any, site: GeneratedSite) -> None:
    full = client.post(
        "/v1/crawls",
        json={"url": f"{site.base}/", "mode": "full", "max_pages": 12},
        headers=org.headers,
    )
    rendered = client.post(
        "/v1/crawls",
        json={"url": f"{site.base}/articles/3", "render": "always"},
        headers=org.headers,
    )
    assert full.status_code == 202 and rendered.status_code == 202, (full.text, rendered.text)
    a = wait_for_job(client, full.json()["id"], org.headers, timeout=120)
    b = wait_for_job(client, rendered.json()["id"], org.headers, timeout=120)
    assert a["status"] == b["status"] == "completed", (a, b)
    assert b["pages_crawled"] == 1 and b["progress"].get("pages_rendered") == 1
    totals = _by_meter(org.org_id)
    assert totals[("jobs", "crawl")] == 2
    rendered_pages = a["progress"].get("pages_rendered", 0) + 1  # auto renders some pages
    assert totals[("pages_crawled", "rendered")] == rendered_pages
    static = totals.get(("pages_crawled", "static"), 0)
    assert static + rendered_pages == a["pages_crawled"] + b["pages_crawled"]
    # The rollups (what the usage endpoint reads) hold exactly the events' sum.
    assert _rollup_sum(org.org_id) == sum(totals.values())
    usage = client.get("/v1/billing/usage", headers=org.headers).json()
    pages = {m["meter"]: m for m in usage["meters"]}["pages_crawled"]
    assert pages["quantity"] == a["pages_crawled"] + 1


def test_inference_tokens_equal_the_response_usage(
    migrated: dict[str, object], tmp_path: Path
) -> None:
    from inference.testing import build_tiny_model
    from tests.inference.stack import Stack

    tiny = build_tiny_model(tmp_path / "tiny")
    env = {
        **os.environ,
        "CONVEYOR_MODELS": f"tiny={tiny}",
        "CONVEYOR_INFERENCE_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    stack = Stack(env, concurrency=4, log_dir=tmp_path / "logs")
    try:
        stack.wait_ready(["tiny"])
        tenant = make_org()
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "count to five"}],
            "max_tokens": 6,
        }
        with httpx.Client(base_url=stack.url, headers=tenant.headers, timeout=60) as http:
            answers = [http.post("/v1/chat/completions", json=body) for _ in range(2)]
        for answer in answers:
            assert answer.status_code == 200, answer.text
        prompt = sum(a.json()["usage"]["prompt_tokens"] for a in answers)
        completion = sum(a.json()["usage"]["completion_tokens"] for a in answers)
        deadline = time.monotonic() + 20
        while _by_meter(tenant.org_id).get(("jobs", "inference"), 0) < 2:  # committed just after
            assert time.monotonic() < deadline, _by_meter(tenant.org_id)
            time.sleep(0.2)
        totals = _by_meter(tenant.org_id)
        assert totals[("tokens_in", "tiny")] == prompt
        assert totals[("tokens_out", "tiny")] == completion
        assert totals[("jobs", "inference")] == 2
    finally:
        stack.stop()


def _celery(log: Path, env: dict[str, str], *args: str) -> ServiceProcess:
    cmd = [sys.executable, "-m", "celery", "-A", "workers.app", *args, "-l", "INFO"]
    return ServiceProcess(cmd, env={**os.environ, **env}, log=log)


def _worker(queues: str, name: str) -> list[str]:
    node = f"{name}-{uuid.uuid4().hex[:6]}@%h"
    return ["worker", "-Q", queues, "-P", "prefork", "-c", "1", "-n", node,
            "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip


def test_a_worker_sigkilled_mid_crawl_meters_the_job_once(
    migrated: dict[str, object], site: GeneratedSite, tmp_path: Path
) -> None:
    """A private broker database (no other worker of the session takes the job); the first
    worker is SIGKILLed once pages were crawled; its lease lapses, beat's sweep re-queues the
    job (the production path) and a second worker finishes the crawl: one ``jobs`` event, and
    pages = the counter = the stored pages."""
    from celery import Celery

    from jobs.service import validate_input
    from store import jobs as job_store

    db = _claim_redis_db()
    broker = f"{REDIS_BASE}/{db}"
    redis.Redis.from_url(broker).flushdb()
    env = {
        "CONVEYOR_BROKER_URL": broker,
        "CONVEYOR_CRAWL_ALLOWED_HOSTS": site.host,
        "CONVEYOR_CRAWL_SPLIT_THRESHOLD": str(10**9),
        "CONVEYOR_CRAWL_STALE_CLAIM_SECONDS": "5",  # the dead worker's claims come back
        **FAST_RECOVERY_ENV,  # lease 6 s, swept every 2 s
    }
    tenant = make_org()
    urls = [f"{site.base}/articles/{i}" for i in range(1, 7)] + [
        f"{site.base}/slow?s=3&n={i}" for i in range(3)
    ]
    payload = validate_input("crawl", {"mode": "select", "urls": urls, "max_pages": len(urls)})
    with session_scope() as session:
        job_id = job_store.insert_job(session, org_id=tenant.org_id, kind="crawl", input=payload).id
    sender = Celery(broker=broker)
    first = _celery(tmp_path / "first.log", env, *_worker("crawl", "first"))
    second: ServiceProcess | None = None
    beat = _celery(
        tmp_path / "beat.log", env, "beat", "-S", "workers.beat:ResilientRedBeatScheduler"
    )
    try:
        sender.send_task("crawl.run", args=[job_id], queue="crawl", task_id=str(uuid.uuid4()))
        deadline = time.monotonic() + 60
        while True:
            with session_scope() as session:
                job = session.get(Job, job_id)
                crawled = int((job.progress or {}).get("pages_crawled", 0)) if job else 0
                status = job.status if job else None
            if status == "running" and crawled >= 1:
                break
            assert status in ("queued", "running") and time.monotonic() < deadline, status
            time.sleep(0.1)
        first.kill_all()  # SIGKILL, mid-crawl: nothing of the job's end was written
        assert status == "running" and not events_of(tenant.org_id)
        second = _celery(tmp_path / "second.log", env, *_worker("crawl,maintenance", "second"))
        deadline = time.monotonic() + 60
        while True:
            with session_scope() as session:
                job = session.get(Job, job_id)
                assert job is not None
                if job.status in ("completed", "failed", "cancelled"):
                    break
            assert time.monotonic() < deadline, (
                "the crawl did not finish after the redelivery",
                job.status, job.attempts, job.progress, job.lease_expires_at,
                [(p.name, p.read_text()[-3000:]) for p in tmp_path.glob("*.log")],
            )  # fmt: skip
            time.sleep(0.2)
        assert job.status == "completed" and job.attempts >= 2, (job.status, job.error)
        pages = int(job.progress["pages_crawled"])
        totals = _by_meter(tenant.org_id)
        assert totals == {("jobs", "crawl"): 1, ("pages_crawled", "static"): pages}
        assert len(events_of(tenant.org_id)) == 2
        assert _rollup_sum(tenant.org_id) == 1 + pages
        with session_scope() as session:
            stored = session.scalar(
                select(func.count()).select_from(ResultItem).where(ResultItem.job_id == job_id)
            )
        assert pages == stored >= 7  # every crawled page once: none missing, none twice
        done = job.progress
        assert pages + done.get("pages_failed", 0) + done.get("pages_skipped", 0) == len(urls)
    finally:
        first.stop(timeout=5)
        beat.stop(timeout=5)
        if second is not None:
            second.stop(timeout=5)
        redis.Redis.from_url(broker).flushdb()
        redis.Redis.from_url(f"{REDIS_BASE}/0").delete(f"conveyor:test-db-lock:{db}")
