"""Billing's beat work: storage GB-hours metered from durable state once per resource and hour
(reruns write nothing), an organisation out of credit has its deployments and its app projects'
environments (real processes on the local backend) stopped (never deleted) after the grace
period with a webhook event, and ``conveyor billing close-period`` is the idempotent close."""

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
from tests.helpers import wait_for_job
from tests.projects.conftest import projects_backend
from webhooks.models import WebhookDelivery

__all__ = ["projects_backend"]


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


def _stopped_deliveries(org_id: str) -> list[Any]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(WebhookDelivery.payload).where(
                    WebhookDelivery.org_id == org_id,
                    WebhookDelivery.event_type == "billing.deployments_stopped",
                )
            ).all()
        )


def test_out_of_credit_stops_project_environments_and_a_deploy_brings_them_back(
    client: Any,
    worker: Any,
    projects_backend: Any,
    tmp_path: Any,
    operator: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import uuid

    from config import get_settings
    from projects.models import Project, ProjectEnvironment, ProjectVolume
    from projects.testing import commit_version

    poor = make_org(plan="free")
    monkeypatch.setattr(get_settings(), "crawl_allowed_hosts", "127.0.0.1")
    hook = client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["billing.deployments_stopped"]},
        headers=poor.headers,
    )
    assert hook.status_code == 201, hook.text
    repo = tmp_path / "repo"
    commit_version(repo, "v1")
    slug = f"broke-{uuid.uuid4().hex[:6]}"
    pid = client.post(
        "/v1/projects",
        json={"name": "Broke", "slug": slug, "git_repository": f"file://{repo}",
              "git_branch": "main", "health_check_path": "/health"},
        headers=poor.headers,
    ).json()["id"]  # fmt: skip
    client.post(
        f"/v1/projects/{pid}/volumes", json={"name": "data", "mount_path": "/data"},
        headers=poor.headers,
    )  # fmt: skip

    def deploy() -> Any:
        accepted = client.post(f"/v1/projects/{pid}/deploy", json={}, headers=poor.headers)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["links"]["job"].rsplit("/", 1)[-1]
        wait_for_job(client, job_id, poor.headers, timeout=90)
        return accepted.json()["deployment_id"]

    deploy()
    answer = client.get(f"/apps/{slug}/production/").json()
    assert answer["version"] == "v1"
    with session_scope() as session:  # 220 USD of usage against a 5 USD allowance
        usage = service.Usage(
            poor.org_id, "gpu_seconds", 200_000, "a100", "test", "x", utcnow(), f"t:{pid}"
        )
        service.record_usage(session, [usage])
    monkeypatch.setattr(get_settings(), "billing_grace_seconds", 0.0)
    assert poor.org_id in enforce_credit()["stopped"]
    assert poor.org_id not in enforce_credit()["stopped"]  # once

    with session_scope() as session:
        (env,) = session.scalars(
            select(ProjectEnvironment).where(ProjectEnvironment.project_id == pid)
        ).all()
        assert env.status == "stopped" and env.active_deployment_id is None
        # never deleted: the project, its environment and its volume are all there
        assert session.get(Project, pid).deleted_at is None
        assert session.scalars(select(ProjectVolume).where(ProjectVolume.project_id == pid)).all()
        env_id = env.id
    with pytest.raises(ProcessLookupError):
        os.kill(answer["pid"], 0)
    assert client.get(f"/apps/{slug}/production/").status_code >= 500  # nothing serves it
    (payload,) = _stopped_deliveries(poor.org_id)
    assert payload["data"]["stopped"] == [env_id]
    status = client.get(f"/v1/projects/{pid}/status", headers=poor.headers).json()
    assert status["status"] == "stopped"

    # Credit again: the next deploy starts it (new work is refused until then).
    refused = client.post(f"/v1/projects/{pid}/deploy", json={}, headers=poor.headers)
    assert refused.status_code == 402, refused.text
    grant = {"org_id": poor.org_id, "amount_micros": 500_000_000, "reason": "top-up"}
    assert client.post("/v1/billing/credits", json=grant, headers=operator).status_code == 201
    deploy()
    assert client.get(f"/apps/{slug}/production/").json()["version"] == "v1"
    assert not enforce_credit()["stopped"]


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
