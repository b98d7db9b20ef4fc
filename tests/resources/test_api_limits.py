"""Through the REST API with a real worker: PATCHed limits reach the running server (202 + a
job), volume size limits enforced by the beat usage check (read-only + degraded + alert, undone
when the limit is raised), backup retention bounded by the plan and honoured by the beat
pruning, and shared Redis ACL users re-applied by the beat reconcile."""

from __future__ import annotations

import stat
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.helpers import wait_for_job
from tests.resources.apihelpers import backup, creds, delete, provision
from tests.resources.conftest import connect_url

pytestmark = pytest.mark.usefixtures("pg_available", "redis_available")


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _patch(client: Any, org: Any, rid: str, body: dict[str, Any]) -> Any:
    return client.patch(f"/v1/resources/{rid}", json=body, headers=org.headers)


def _job_done(client: Any, org: Any, body: dict[str, Any]) -> dict[str, Any]:
    job = wait_for_job(client, body["links"]["job"].rsplit("/", 1)[1], org.headers, timeout=60)
    assert job["status"] == "completed", job
    return dict(job)


def test_patched_limits_reach_the_running_server(client: Any, org: Any, api_env: Any) -> None:
    res = provision(client, org, type="postgres", limits={"connection_limit": 5})
    rid = res["id"]
    r = _patch(client, org, rid, {"limits": {"maxmemory": "1mb"}})
    assert r.status_code == 422 and "cannot apply maxmemory" in r.json()["error"]["message"]
    r = _patch(client, org, rid, {"limits": {"connection_limit": 1}})
    assert r.status_code == 202, r.text
    assert r.json()["limits"]["connection_limit"] == 1
    job = _job_done(client, org, r.json())
    assert job["input"]["operation"] == "limits"
    url = creds(client, org, rid)["env"]["DATABASE_URL"]
    with (
        connect_url(url),
        pytest.raises(psycopg.OperationalError, match="too many connections for role"),
    ):
        connect_url(url)
    metrics = client.get(f"/v1/resources/{rid}/metrics", headers=org.headers).json()
    assert metrics["connection_limit"] == 1
    same = _patch(client, org, rid, {"limits": {"connection_limit": 1}})
    assert same.status_code == 200  # nothing to apply: no job
    r = _patch(client, org, rid, {"backup_schedule": "0 4 * * *"})
    assert r.status_code == 200 and r.json()["next_backup_at"]
    r = _patch(client, org, "res_" + "0" * 16, {"limits": {"connection_limit": 2}})
    assert r.status_code == 404
    delete(client, org, rid)


def test_volume_size_limit_enforced_by_the_usage_check(
    client: Any,
    org: Any,
    api_env: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from config import get_settings
    from tasks.provision import check_usage

    # A receiver on a closed local port: deliveries are recorded (and fail), nothing leaves.
    monkeypatch.setattr(get_settings(), "crawl_allowed_hosts", "127.0.0.1:9", raising=False)
    hook = client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["resource.degraded"]},
        headers=org.headers,
    )
    assert hook.status_code == 201, hook.text
    res = provision(client, org, type="volume", limits={"size_bytes": 100})
    rid = res["id"]
    root = Path(creds(client, org, rid)["env"]["VOLUME_PATH"])
    (root / "data.bin").write_bytes(b"x" * 150)
    before = root.stat().st_mode
    with caplog.at_level("WARNING", logger="webhooks.events"):
        check_usage()
    body = client.get(f"/v1/resources/{rid}", headers=org.headers).json()
    assert body["status"] == "degraded" and body["status_reason"] == "size_limit_exceeded"
    assert any("resource.degraded" in r.getMessage() for r in caplog.records)
    deliveries = client.get(
        f"/v1/webhooks/{hook.json()['id']}/deliveries", headers=org.headers
    ).json()["data"]
    assert [d["event_type"] for d in deliveries] == ["resource.degraded"]
    for path in (root, root / "data.bin"):
        assert path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP) == 0, oct(path.stat().st_mode)
    metrics = client.get(f"/v1/resources/{rid}/metrics", headers=org.headers).json()
    assert metrics["read_only"] is True and metrics["over_limit"] is True
    check_usage()  # still over: no second alert
    deliveries_url = f"/v1/webhooks/{hook.json()['id']}/deliveries"
    assert len(client.get(deliveries_url, headers=org.headers).json()["data"]) == 1
    r = _patch(client, org, rid, {"limits": {"size_bytes": 1000}})
    assert r.status_code == 202, r.text
    _job_done(client, org, r.json())
    body = client.get(f"/v1/resources/{rid}", headers=org.headers).json()
    assert body["status"] == "ready" and body["status_reason"] is None
    assert root.stat().st_mode == before  # writable again, as it was
    (root / "more.bin").write_bytes(b"y")
    client.delete(f"/v1/webhooks/{hook.json()['id']}", headers=org.headers)
    delete(client, org, rid)


def test_backup_retention_bounded_by_the_plan_and_pruned_by_beat(
    client: Any, org: Any, api_env: Any
) -> None:
    from resources.jobs import expire_backups
    from store.db import session_scope
    from tasks.provision import scheduled_backups

    r = client.post(
        "/v1/resources",
        json={"type": "volume", "name": "too-long", "backup_retention_days": 4000},
        headers=org.headers,
    )
    assert r.status_code == 422 and "maximum of 3650" in r.json()["error"]["message"], r.text
    res = provision(client, org, type="volume", backup_retention_days=30, backup_retention_count=2)
    rid = res["id"]
    assert (res["backup_retention_days"], res["backup_retention_count"]) == (30, 2)
    r = _patch(client, org, rid, {"backup_retention_count": 2_000_000})
    assert r.status_code == 422 and "backup_retention_count" in r.json()["error"]["message"]
    (Path(creds(client, org, rid)["env"]["VOLUME_PATH"]) / "f").write_text("v")
    taken = [backup(client, org, rid) for _ in range(3)]
    assert all(b["verified_at"] for b in taken)
    scheduled_backups()  # beat: prunes past the count
    listed = client.get(f"/v1/resources/{rid}/backups", headers=org.headers).json()["data"]
    assert [b["id"] for b in listed] == [b["id"] for b in reversed(taken[1:])]
    assert not Path(api_env.backups_dir / rid.removeprefix("res_") / taken[0]["id"]).exists()
    r = _patch(client, org, rid, {"backup_retention_days": 1})
    assert r.status_code == 200 and r.json()["backup_retention_days"] == 1
    for b in client.get(f"/v1/resources/{rid}/backups", headers=org.headers).json()["data"]:
        assert _ts(b["expires_at"]) - _ts(b["completed_at"]) == timedelta(days=1)
    with session_scope() as session:  # two days later, as beat would see it
        assert expire_backups(session, datetime.now().astimezone() + timedelta(days=2)) >= 2
    assert client.get(f"/v1/resources/{rid}/backups", headers=org.headers).json()["data"] == []
    delete(client, org, rid)


def test_shared_redis_acl_reapplied_by_the_beat_reconcile(
    client: Any, org: Any, api_env: Any
) -> None:
    from tasks.provision import reconcile_access

    res = provision(client, org, type="redis", tier="shared")
    c = creds(client, org, res["id"])
    url, prefix = c["env"]["REDIS_URL"], c["key_prefix"]
    redis.Redis.from_url(url).set(prefix + "k", "v")
    admin = redis.Redis.from_url(api_env.redis_admin_url)
    user = url.split("//", 1)[1].split(":", 1)[0]
    admin.acl_deluser(user)  # behind our back, as a restart without an aclfile would
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(url).ping()
    assert reconcile_access() >= 1
    assert redis.Redis.from_url(url).get(prefix + "k") == b"v"
    delete(client, org, res["id"])


def test_limits_that_cannot_be_applied_are_not_claimed(
    client: Any, org: Any, api_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resources.backends.volume import Volume

    res = provision(client, org, type="volume", limits={"size_bytes": 500})

    def refuse(self: Any, handle: Any, limits: dict[str, Any]) -> dict[str, Any]:
        raise OSError("Read-only file system")

    monkeypatch.setattr(Volume, "apply_limits", refuse)
    r = _patch(client, org, res["id"], {"limits": {"size_bytes": 900}})
    assert r.status_code == 202
    job = wait_for_job(client, r.json()["links"]["job"].rsplit("/", 1)[1], org.headers)
    assert job["status"] == "failed" and "Read-only file system" in job["error"]["message"]
    after = client.get(f"/v1/resources/{res['id']}", headers=org.headers).json()
    assert after["limits"] == {"size_bytes": 500} and after["status"] == "ready"
    delete(client, org, res["id"])
