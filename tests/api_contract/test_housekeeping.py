"""Beat housekeeping, the job.progress throttle, and rate limits failing open."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from common.timeutil import utcnow
from idempotency.models import IdempotencyKey
from store.db import session_scope
from tests.conftest import OrgKey
from webhooks.models import WebhookDelivery


def test_purge_tasks_remove_only_expired_rows(org: OrgKey) -> None:
    from tasks.maintenance import purge_idempotency_keys, purge_webhook_deliveries

    old = utcnow() - timedelta(days=40)
    with session_scope() as session:
        for key, created in (("old", old), ("new", utcnow())):
            session.add(
                IdempotencyKey(org_id=org.org_id, key=key, fingerprint="f", created_at=created)
            )
        for status, created in (("succeeded", old), ("pending", old), ("failed", utcnow())):
            session.add(
                WebhookDelivery(
                    org_id=org.org_id,
                    msg_id="msg_x",
                    event_type="job.completed",
                    payload={},
                    status=status,
                    created_at=created,
                )
            )
    assert purge_idempotency_keys() >= 1
    assert purge_webhook_deliveries() >= 1
    with session_scope() as session:
        keys = session.scalars(
            select(IdempotencyKey.key).where(IdempotencyKey.org_id == org.org_id)
        ).all()
        statuses = session.scalars(
            select(WebhookDelivery.status).where(WebhookDelivery.org_id == org.org_id)
        ).all()
    assert keys == ["new"]
    assert sorted(statuses) == ["failed", "pending"]  # pending ones are never purged


def test_progress_events_are_throttled_per_job() -> None:
    from jobs.service import _progress_due

    assert _progress_due("job-a", 60)
    assert not _progress_due("job-a", 60)
    assert _progress_due("job-b", 60)
    assert _progress_due("job-c", 0)
    assert _progress_due("job-c", 0)


def test_rate_limit_storage_down_fails_open_without_headers(migrated: Any, org: OrgKey) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.ratelimit import RateLimiter

    app = create_app()
    app.state.rate_limiter.__dict__.update(RateLimiter("redis://127.0.0.1:1/0").__dict__)
    with TestClient(app) as local:
        response = local.get("/v1/jobs", headers=org.headers)
    assert response.status_code == 200
    assert "X-RateLimit-Limit" not in response.headers


def test_idempotency_rows_count_one_per_key(client: Any, org: OrgKey) -> None:
    headers = {**org.headers, "Idempotency-Key": "count-me"}
    for _ in range(3):
        client.post("/v1/keys", json={}, headers=headers)
    with session_scope() as session:
        n = session.scalar(
            select(func.count())
            .select_from(IdempotencyKey)
            .where(IdempotencyKey.org_id == org.org_id, IdempotencyKey.key == "count-me")
        )
    assert n == 1


def test_lost_pending_deliveries_are_requeued_and_delivered(
    client: Any, org: OrgKey, worker: Any, receiver: Any, monkeypatch: Any
) -> None:
    import time

    import standardwebhooks

    from config import get_settings
    from tasks.maintenance import requeue_stale_webhook_deliveries
    from webhooks import service
    from webhooks.schemas import WebhookCreate

    port = receiver.server.server_address[1]
    monkeypatch.setattr(get_settings(), "crawl_allowed_hosts", f"127.0.0.1:{port}", raising=False)
    with session_scope() as session:
        endpoint, secret = service.create_endpoint(
            session, org.org_id, WebhookCreate(url=receiver.url, events=["job.completed"])
        )
        # A delivery recorded but never enqueued (the broker was down at that moment).
        (lost,) = service.record_event(
            session, org_id=org.org_id, event_type="job.completed", data={"id": "job_lost"}
        )
        fresh = service.record_event(
            session, org_id=org.org_id, event_type="job.completed", data={"id": "job_fresh"}
        )[0]
        session.get(WebhookDelivery, lost).updated_at = utcnow() - timedelta(hours=3)
    assert requeue_stale_webhook_deliveries() >= 1
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not receiver.requests:
        time.sleep(0.05)
    (got,) = receiver.requests
    assert (
        standardwebhooks.Webhook(secret).verify(got.body, got.headers)["data"]["id"] == "job_lost"
    )
    with session_scope() as session:
        assert session.get(WebhookDelivery, fresh).status == "pending"  # not stale: left alone
        assert endpoint.id
