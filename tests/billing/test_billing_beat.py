"""Billing's beat work: storage GB-hours metered from durable state once per resource and hour
(reruns write nothing), an organisation out of credit has its deployments stopped (never
deleted) after the grace period with a signed-webhook event, and ``conveyor billing
close-period`` is the idempotent close."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from billing import service
from billing.jobs import enforce_credit
from billing.models import BillingAccount
from common.timeutil import utcnow
from deployments.models import Deployment
from plans.service import period_key
from resources.jobs import STORAGE_METER_HOURS, meter_storage
from resources.models import Resource
from store.db import session_scope
from tests.billing.conftest import events_of
from tests.conftest import make_org
from webhooks.models import WebhookDelivery


def test_storage_hours_are_metered_once_per_resource_and_hour(migrated: Any) -> None:
    owner = make_org()
    now = utcnow()
    with session_scope() as session:
        session.add(
            Resource(
                org_id=owner.org_id, name="db1", type="postgres", tier="shared", status="ready",
                limits={"size_bytes": 2_500_000_000}, created_at=now - timedelta(days=1),
            )
        )  # fmt: skip
    first = meter_storage(now)
    assert first >= STORAGE_METER_HOURS
    assert meter_storage(now) == 0  # the same hours again: nothing twice
    mine = [e for e in events_of(owner.org_id) if e.meter == "storage_gb_hours"]
    assert len(mine) == STORAGE_METER_HOURS
    assert {(e.quantity, e.dimension, e.unit) for e in mine} == {(3, "postgres", "gb_hour")}
    assert len({e.idempotency_key for e in mine}) == STORAGE_METER_HOURS


def test_out_of_credit_stops_deployments_after_grace(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings

    poor = make_org(plan="free")
    monkeypatch.setattr(get_settings(), "crawl_allowed_hosts", "127.0.0.1")
    hook = client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["billing.deployments_stopped"]},
        headers=poor.headers,
    )
    assert hook.status_code == 201, hook.text
    with session_scope() as session:
        dep = Deployment(
            org_id=poor.org_id, name="svc", model="tiny", model_path="/m", runtime="cpu",
            backend="local", desired="running", status="running",
        )  # fmt: skip
        session.add(dep)
        session.flush()
        dep_id = dep.id
        usage = service.Usage(
            poor.org_id, "gpu_seconds", 200_000, "a100", "test", "x", utcnow(), f"t:{dep_id}"
        )
        service.record_usage(session, [usage])  # 220 USD of usage against a 5 USD allowance
    monkeypatch.setattr(get_settings(), "billing_grace_seconds", 3600.0)
    assert poor.org_id in enforce_credit()["overdrawn"]
    with session_scope() as session:
        assert session.get(Deployment, dep_id).desired == "running"  # within the grace period
        account = session.get(BillingAccount, poor.org_id)
        account.overdrawn_since = utcnow() - timedelta(hours=2)
    stopped = enforce_credit()
    assert poor.org_id in stopped["stopped"]
    assert poor.org_id not in enforce_credit()["stopped"]  # once
    with session_scope() as session:
        dep = session.get(Deployment, dep_id)
        assert dep.desired == "stopped" and dep.deleted_at is None  # stopped, never deleted
        (delivery,) = session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.org_id == poor.org_id,
                WebhookDelivery.event_type == "billing.deployments_stopped",
            )
        ).all()
        assert delivery.payload["data"]["stopped"] == [dep_id]


def test_cli_close_period_is_idempotent(migrated: Any) -> None:
    buyer = make_org(plan="startup")
    last = service.previous_period(period_key())
    at = service.period_bounds(last)[0] + timedelta(hours=5)
    with session_scope() as session:
        service.record_usage(
            session,
            [service.Usage(buyer.org_id, "jobs", 3, "crawl", "t", "j", at, f"cli:{buyer.org_id}")],
        )
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "billing",
        "close-period",
        "--period",
        last,
        "--org",
        buyer.name,
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.split()) == 1
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == "", again.stderr
