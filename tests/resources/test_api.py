"""End to end through the REST API with a real worker and real servers: provision each type
and tier, credentials (masked / full / rotated), backups proven by restores, restore into new
resources, PITR with the window check, branches, bindings into a local deployment, scheduled
backups, archive-failure alerts and tenant isolation."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from tests.helpers import wait_for_job
from tests.resources.apihelpers import backup, creds, delete, provision, wait_resource
from tests.resources.conftest import connect_url

pytestmark = pytest.mark.usefixtures("pg_available", "redis_available")


def test_postgres_shared_end_to_end(client: Any, org: Any, other_org: Any, api_env: Any) -> None:
    res = provision(client, org, type="postgres", tier="shared")
    rid = res["id"]
    assert res["env"]["DATABASE_URL"].count("****") == 1  # masked everywhere but /credentials
    listed = client.get("/v1/resources?type=postgres", headers=org.headers).json()
    assert [r["id"] for r in listed["data"]] == [rid]
    assert "****" in listed["data"][0]["env"]["DATABASE_URL"]
    url = creds(client, org, rid)["env"]["DATABASE_URL"]
    assert "****" not in url
    with connect_url(url) as conn:
        conn.execute("CREATE TABLE items (id int primary key, body text)")
        conn.execute("INSERT INTO items SELECT g, 'x' || g FROM generate_series(1, 250) g")
    # Tenant isolation: invisible, credentials unreachable.
    for path in ("", "/credentials", "/backups", "/metrics"):
        r = client.get(f"/v1/resources/{rid}{path}", headers=other_org.headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get("/v1/resources", headers=other_org.headers).json()["data"] == []
    # Back up; verified by a scratch restore.
    b = backup(client, org, rid)
    assert b["status"] == "completed" and b["verified_at"], b
    assert b["fingerprint"]["public.items"]["rows"] == 250
    with connect_url(url) as conn:
        conn.execute("DELETE FROM items")
    r = client.post(
        f"/v1/resources/{rid}/restore", json={"backup_id": b["id"]}, headers=org.headers
    )
    assert r.status_code == 202, r.text
    restored = wait_resource(client, r.json()["id"], org.headers)
    assert restored["status"] == "ready" and restored["source"]["backup_id"] == b["id"]
    with connect_url(creds(client, org, restored["id"])["env"]["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (250,)
    # PITR needs the dedicated tier: 422 before any work.
    r = client.post(
        f"/v1/resources/{rid}/restore",
        json={"target_time": "2026-01-01T00:00:00Z"},
        headers=org.headers,
    )
    assert r.status_code == 422, r.text
    # Rotation: old password refused, new works.
    r = client.post(f"/v1/resources/{rid}/credentials/rotate", headers=org.headers)
    assert r.status_code == 202
    assert (
        wait_for_job(client, r.json()["links"]["job"].rsplit("/", 1)[1], org.headers)["status"]
        == "completed"
    )
    with pytest.raises(psycopg.OperationalError):
        connect_url(url)
    new_url = creds(client, org, rid)["env"]["DATABASE_URL"]
    with connect_url(new_url) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)
    metrics = client.get(f"/v1/resources/{rid}/metrics", headers=org.headers).json()
    assert metrics["size_bytes"] > 0 and metrics["last_backup_age_seconds"] >= 0
    delete(client, org, rid)
    delete(client, org, restored["id"])
    with pytest.raises(psycopg.OperationalError):
        connect_url(new_url)


def test_shared_tier_restores_the_newest_verified_backup_at_target_time(
    client: Any, org: Any, api_env: Any
) -> None:
    """Sylphx restores by ``targetTime`` on every database: on the shared tier that is the newest
    verified backup taken at or before it, answered with ``restored_to`` and its id."""
    rid = provision(client, org, type="postgres", tier="shared")["id"]
    url = creds(client, org, rid)["env"]["DATABASE_URL"]
    with connect_url(url) as conn:
        conn.execute("CREATE TABLE items (id int)")
        conn.execute("INSERT INTO items SELECT generate_series(1, 3)")
    first = backup(client, org, rid)
    with connect_url(url) as conn:
        conn.execute("INSERT INTO items SELECT generate_series(4, 5)")
    second = backup(client, org, rid)
    assert first["verified_at"] and second["verified_at"]
    between = datetime.fromisoformat(second["created_at"].replace("Z", "+00:00")) - timedelta(
        microseconds=1
    )
    r = client.post(
        f"/v1/resources/{rid}/restore",
        json={"target_time": between.isoformat()},
        headers=org.headers,
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["backup_id"], body["restored_to"]) == (first["id"], first["created_at"])
    assert body["source"]["restored_to"] == first["created_at"]
    restored = wait_resource(client, body["id"], org.headers)
    assert restored["status"] == "ready", restored
    with connect_url(creds(client, org, restored["id"])["env"]["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (3,)
    deadline = time.monotonic() + 60
    while True:  # 409 while the source's last operation (a restore, a verify) still runs
        latest = client.post(
            f"/v1/resources/{rid}/restore",
            json={"target_time": datetime.now(UTC).isoformat()},
            headers=org.headers,
        )
        if latest.status_code != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert latest.status_code == 202 and latest.json()["backup_id"] == second["id"]
    wait_resource(client, latest.json()["id"], org.headers)
    early = client.post(
        f"/v1/resources/{rid}/restore",
        json={"target_time": "2026-01-01T00:00:00Z"},
        headers=org.headers,
    )
    assert early.status_code == 422 and first["created_at"] in early.json()["error"]["message"]
    for res_id in (rid, restored["id"], latest.json()["id"]):
        delete(client, org, res_id)


def test_redis_blob_volume_through_the_api(client: Any, org: Any, api_env: Any) -> None:
    rds = provision(client, org, type="redis", tier="shared")
    c = creds(client, org, rds["id"])
    assert c["key_prefix"] and "REDIS_URL" in c["env"]
    kv = redis.Redis.from_url(c["env"]["REDIS_URL"])
    kv.set(c["key_prefix"] + "a", "1")
    b = backup(client, org, rds["id"])
    assert b["verified_at"] and b["fingerprint"]["keys"]["rows"] == 1
    blob = provision(client, org, type="blob")
    bc = creds(client, org, blob["id"])
    assert {"endpoint_url", "bucket", "access_key_id", "secret_access_key"} <= set(bc)
    assert blob["env"]["BLOB_SECRET_ACCESS_KEY"] == "****"
    put = client.post(
        f"/v1/resources/{blob['id']}/presign",
        json={"key": "f.txt", "method": "PUT"},
        headers=org.headers,
    ).json()
    assert httpx.put(put["url"], content=b"data").status_code == 200
    get = client.post(
        f"/v1/resources/{blob['id']}/presign", json={"key": "f.txt"}, headers=org.headers
    ).json()
    assert httpx.get(get["url"]).content == b"data"
    vol = provision(client, org, type="volume", limits={"size_bytes": 10})
    path = Path(creds(client, org, vol["id"])["env"]["VOLUME_PATH"])
    (path / "f").write_text("hello world!")
    assert (
        client.get(f"/v1/resources/{vol['id']}/metrics", headers=org.headers).json()["over_limit"]
        is True
    )
    assert (
        client.post(
            "/v1/resources",
            json={"type": "volume", "tier": "dedicated", "name": "v"},
            headers=org.headers,
        ).status_code
        == 422
    )
    for r in (rds, blob, vol):
        delete(client, org, r["id"])
    admin = redis.Redis.from_url(api_env.redis_admin_url)
    assert admin.exists(c["key_prefix"] + "a") == 0
    assert not path.exists()


def test_dedicated_postgres_pitr_branch_and_alerts(client: Any, org: Any, api_env: Any) -> None:
    res = provision(client, org, type="postgres", tier="dedicated")
    rid = res["id"]
    url = creds(client, org, rid)["env"]["DATABASE_URL"]
    with connect_url(url) as conn:
        conn.execute("CREATE TABLE items (id int primary key)")
    b = backup(client, org, rid)
    assert b["verified_at"] and b["method"] == "pg_basebackup"
    with connect_url(url) as conn:
        conn.execute("INSERT INTO items SELECT generate_series(1, 10)")
    time.sleep(0.3)
    t1 = datetime.now(UTC)
    time.sleep(0.3)
    with connect_url(url) as conn:
        conn.execute("INSERT INTO items SELECT generate_series(11, 20)")
    deadline = time.monotonic() + 30
    while True:  # wait until the archive holds a commit after t1 (archive_timeout 1 s)
        listed = client.get(f"/v1/resources/{rid}/backups", headers=org.headers).json()["data"]
        until = listed[0]["restorable_until"]
        if until and datetime.fromisoformat(until.replace("Z", "+00:00")) > t1:
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.5)
    assert listed[0]["restorable_from"]
    r = client.post(
        f"/v1/resources/{rid}/restore",
        json={"target_time": t1.isoformat(), "name": "at-t1"},
        headers=org.headers,
    )
    assert r.status_code == 202, r.text
    at_t1 = wait_resource(client, r.json()["id"], org.headers)
    assert at_t1["status"] == "ready", at_t1
    with connect_url(creds(client, org, at_t1["id"])["env"]["DATABASE_URL"]) as conn:
        assert [x[0] for x in conn.execute("SELECT id FROM items ORDER BY id")] == list(
            range(1, 11)
        )
    late = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    before = client.get("/v1/resources", headers=org.headers).json()["data"]
    r = client.post(f"/v1/resources/{rid}/restore", json={"target_time": late}, headers=org.headers)
    assert r.status_code == 422 and "restorable window" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["details"]["restorable_until"]
    assert len(client.get("/v1/resources", headers=org.headers).json()["data"]) == len(before)
    # Branch now: isolated from the parent.
    r = client.post(f"/v1/resources/{rid}/branches", json={"name": "br"}, headers=org.headers)
    br = wait_resource(client, r.json()["id"], org.headers)
    with connect_url(creds(client, org, br["id"])["env"]["DATABASE_URL"]) as conn:
        conn.execute("INSERT INTO items VALUES (100)")
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (21,)
    with connect_url(url) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (20,)
    # Archive failure → degraded (an alert), recovery → ready.
    from tasks.provision import check_archiving

    archive = Path(api_env.backups_dir.resolve() / rid.removeprefix("res_") / "wal")
    os.chmod(archive, 0o500)
    try:
        with connect_url(url) as conn:
            conn.execute("INSERT INTO items VALUES (500)")
        deadline = time.monotonic() + 30
        while (
            client.get(f"/v1/resources/{rid}", headers=org.headers).json()["status"] != "degraded"
        ):
            assert time.monotonic() < deadline
            check_archiving()
            time.sleep(0.5)
        body = client.get(f"/v1/resources/{rid}", headers=org.headers).json()
        assert "archiving is failing" in body["status_reason"]
    finally:
        os.chmod(archive, 0o755)
    deadline = time.monotonic() + 60
    while client.get(f"/v1/resources/{rid}", headers=org.headers).json()["status"] != "ready":
        assert time.monotonic() < deadline
        check_archiving()
        time.sleep(0.5)
    for x in (at_t1["id"], br["id"], rid):
        delete(client, org, x)


def test_scheduled_backup_runs_from_beat(client: Any, org: Any, api_env: Any) -> None:
    from resources.models import Resource
    from store.db import session_scope
    from tasks.provision import scheduled_backups

    res = provision(client, org, type="volume", backup_schedule="0 3 * * *")
    assert res["next_backup_at"]
    bad = client.patch(
        f"/v1/resources/{res['id']}", json={"backup_schedule": "not cron"}, headers=org.headers
    )
    assert bad.status_code == 422
    with session_scope() as session:
        row = session.get(Resource, res["id"])
        assert row is not None
        row.next_backup_at = datetime.now(UTC) - timedelta(seconds=1)
    assert scheduled_backups() >= 1
    deadline = time.monotonic() + 60
    while True:
        data = client.get(f"/v1/resources/{res['id']}/backups", headers=org.headers).json()["data"]
        if data and data[0]["verified_at"]:
            break
        assert time.monotonic() < deadline, data
        time.sleep(0.2)
    assert data[0]["trigger"] == "scheduled"
    after = client.get(f"/v1/resources/{res['id']}", headers=org.headers).json()
    assert after["next_backup_at"] > res["created_at"]
    r = client.delete(f"/v1/resources/{res['id']}/backups/{data[0]['id']}", headers=org.headers)
    assert r.status_code == 204
    assert (
        client.get(f"/v1/resources/{res['id']}/backups", headers=org.headers).json()["data"] == []
    )
    delete(client, org, res["id"])


def test_a_backup_that_does_not_restore_to_the_same_data_fails_loudly(
    client: Any, org: Any, api_env: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from resources.models import ResourceBackup
    from store.db import session_scope
    from tests.helpers import create_job_now

    res = provision(client, org, type="volume")
    path = Path(creds(client, org, res["id"])["env"]["VOLUME_PATH"])
    (path / "a.txt").write_text("a")
    b = backup(client, org, res["id"])
    assert b["verified_at"]
    with session_scope() as session:  # the recorded expectation no longer matches the archive
        row = session.get(ResourceBackup, b["id"])
        assert row is not None
        row.fingerprint = {"files": {"rows": 2, "checksum": "1"}}
    with caplog.at_level("WARNING", logger="webhooks.events"):
        job = create_job_now("backup", org.org_id, {"backup_id": b["id"], "operation": "verify"})
        done = wait_for_job(client, job.id, org.headers, timeout=60)
    assert done["status"] == "failed" and done["error"]["code"] == "verification_failed"
    after = client.get(f"/v1/resources/{res['id']}/backups/{b['id']}", headers=org.headers).json()
    assert after["status"] == "failed" and "files" in after["error"]["message"]
    assert any("resource.backup_failed" in r.getMessage() for r in caplog.records)
    delete(client, org, res["id"])


def test_an_unexpected_backend_error_fails_the_resource_never_stuck(
    client: Any, org: Any, api_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resources.backends.volume import Volume

    def boom(self: Any, ident: str, limits: dict[str, Any]) -> Any:
        raise OSError("No space left on device")

    monkeypatch.setattr(Volume, "provision", boom)
    r = client.post(
        "/v1/resources", json={"type": "volume", "name": "full-disk"}, headers=org.headers
    )
    assert r.status_code == 202
    failed = wait_resource(client, r.json()["id"], org.headers)
    assert failed["status"] == "failed"
    assert failed["status_reason"] == "OSError: No space left on device"
    job = wait_for_job(client, r.json()["links"]["job"].rsplit("/", 1)[1], org.headers)
    assert job["status"] == "failed" and job["error"]["code"] == "internal_error"


def test_work_abandoned_by_a_dead_job_ends_failed(client: Any, org: Any, api_env: Any) -> None:
    from resources.models import Resource
    from store import jobs as job_store
    from store.db import session_scope
    from tasks.provision import scheduled_backups

    with session_scope() as session:  # as the reaper leaves it: job failed, resource not
        job = job_store.insert_job(session, org_id=org.org_id, kind="provision", input={})
        job_store.transition(
            session,
            job.id,
            to=job_store.JobStatus.FAILED,
            from_=["queued"],
            error={"code": "worker_lost", "message": "worker died"},
        )
        res = Resource(
            org_id=org.org_id,
            name="orphan",
            type="volume",
            tier="shared",
            status="provisioning",
            limits={},
            job_id=job.id,
        )
        session.add(res)
        session.flush()
        rid = res.id
    scheduled_backups()
    body = client.get(f"/v1/resources/{rid}", headers=org.headers).json()
    assert body["status"] == "failed" and "ended failed" in body["status_reason"]
