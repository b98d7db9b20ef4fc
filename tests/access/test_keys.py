"""Keys: scopes on create (never stronger than the caller), expiry, allowed addresses,
rotation with and without grace, last use written off the request path, the CLI flags."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.access.conftest import key
from tests.conftest import OrgKey

ROOT = Path(__file__).resolve().parents[2]


def test_create_with_scopes_lists_them_and_they_are_enforced(client: Any, org: OrgKey) -> None:
    created = client.post(
        "/v1/keys", json={"name": "dash", "scopes": ["jobs:read"]}, headers=org.headers
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["scopes"] == ["jobs:read"]
    assert body["member"] and body["created_by"] == body["member"]
    dash = {"Authorization": f"Bearer {body['key']}"}
    assert client.get("/v1/jobs", headers=dash).status_code == 200
    denied = client.post("/v1/diagnostics/sleep", json={"seconds": 0}, headers=dash)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "forbidden"
    assert denied.json()["error"]["details"] == {"required_scope": "jobs:write"}
    listed = client.get("/v1/keys", headers=org.headers).json()["data"]
    row = next(k for k in listed if k["id"] == body["id"])
    assert row["scopes"] == ["jobs:read"] and row["expires_at"] is None
    assert {"last_used_at", "created_by", "member", "allowed_cidrs"} <= set(row)
    assert "key" not in row


def test_unknown_scope_is_422(client: Any, org: OrgKey) -> None:
    answer = client.post("/v1/keys", json={"scopes": ["jobs:delete"]}, headers=org.headers)
    assert answer.status_code == 422
    assert "jobs:delete" in answer.json()["error"]["message"]


def test_a_key_cannot_mint_a_stronger_key(client: Any, org: OrgKey) -> None:
    minter = key(org, ["keys:write", "jobs:read"])
    stronger = client.post("/v1/keys", json={"scopes": ["jobs:write"]}, headers=minter)
    assert stronger.status_code == 403
    assert stronger.json()["error"]["details"] == {"exceeds": ["jobs:write"]}
    admin = client.post("/v1/keys", json={"scopes": ["admin"]}, headers=minter)
    assert admin.status_code == 403
    same = client.post("/v1/keys", json={"scopes": ["jobs:read"]}, headers=minter)
    assert same.status_code == 201
    # no scopes: the creator's own, no more
    default = client.post("/v1/keys", json={}, headers=minter)
    assert default.status_code == 201
    assert default.json()["scopes"] == ["jobs:read", "keys:write"]
    child = {"Authorization": f"Bearer {default.json()['key']}"}
    assert client.post("/v1/diagnostics/sleep", json={}, headers=child).status_code == 403


def test_expired_key_is_401_saying_so(client: Any, org: OrgKey) -> None:
    from common.timeutil import utcnow

    soon = key(org, None, expires_at=utcnow() + timedelta(hours=1))
    assert client.get("/v1/jobs", headers=soon).status_code == 200
    expired = key(org, None, expires_at=utcnow() - timedelta(seconds=1))
    answer = client.get("/v1/jobs", headers=expired)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert "expired" in answer.json()["error"]["message"]
    # the polling hot path too
    assert client.get(f"/v1/jobs/{'0' * 36}", headers=expired).status_code == 401


def test_expires_at_in_the_past_is_refused_and_a_child_never_outlives_its_parent(
    client: Any, org: OrgKey
) -> None:
    from common.timeutil import isoformat_z, utcnow

    past = client.post("/v1/keys", json={"expires_at": "2020-01-01T00:00:00Z"}, headers=org.headers)
    assert past.status_code == 422
    limit = utcnow() + timedelta(hours=2)
    parent = key(org, ["keys:write"], expires_at=limit)
    child = client.post("/v1/keys", json={}, headers=parent).json()
    assert child["expires_at"] == isoformat_z(limit)


def test_allowed_cidrs_over_real_http(live_api: str, org: OrgKey) -> None:
    inside = key(org, None, allowed_cidrs=["127.0.0.0/8"])
    outside = key(org, None, allowed_cidrs=["10.0.0.0/8", "192.168.0.0/16"])
    assert httpx.get(f"{live_api}/v1/jobs", headers=inside).status_code == 200
    answer = httpx.get(f"{live_api}/v1/jobs", headers=outside)
    assert answer.status_code == 403
    assert "address" in answer.json()["error"]["message"]
    # bad CIDRs are a 422, not a stored key
    bad = httpx.post(
        f"{live_api}/v1/keys", json={"allowed_cidrs": ["not-a-net"]}, headers=org.headers
    )
    assert bad.status_code == 422


def test_rotation_with_grace_keeps_the_old_secret_until_then(client: Any, org: OrgKey) -> None:
    first = client.post(
        "/v1/keys", json={"name": "ci", "scopes": ["jobs:read"]}, headers=org.headers
    ).json()
    old = {"Authorization": f"Bearer {first['key']}"}
    rotated = client.post(f"/v1/keys/{first['id']}/rotate", json={}, headers=org.headers)
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["key"] != first["key"] and new["scopes"] == ["jobs:read"] and new["name"] == "ci"
    assert new["replaces"] == first["id"]
    assert client.get("/v1/jobs", headers=old).status_code == 200  # within the 24 h grace
    assert (
        client.get("/v1/jobs", headers={"Authorization": f"Bearer {new['key']}"}).status_code == 200
    )
    listed = {k["id"]: k for k in client.get("/v1/keys", headers=org.headers).json()["data"]}
    assert listed[first["id"]]["revoked_at"] is not None  # the grace end
    # rotating again with no grace: the previous secret stops at once
    again = client.post(
        f"/v1/keys/{new['id']}/rotate", json={"grace_seconds": 0}, headers=org.headers
    )
    assert again.status_code == 201
    assert (
        client.get("/v1/jobs", headers={"Authorization": f"Bearer {new['key']}"}).status_code == 401
    )
    assert (
        client.get(
            "/v1/jobs", headers={"Authorization": f"Bearer {again.json()['key']}"}
        ).status_code
        == 200
    )


def test_revoke_stops_the_key(client: Any, org: OrgKey) -> None:
    made = client.post("/v1/keys", json={}, headers=org.headers).json()
    headers = {"Authorization": f"Bearer {made['key']}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    assert client.delete(f"/v1/keys/{made['id']}", headers=org.headers).status_code == 204
    assert client.get("/v1/jobs", headers=headers).status_code == 401
    assert (
        client.post(f"/v1/keys/{made['id']}/rotate", json={}, headers=org.headers).status_code
        == 409  # a revoked key cannot be rotated
    )


def test_last_used_at_is_written_off_the_request_and_throttled(client: Any, org: OrgKey) -> None:
    from access.usage import RECORDER
    from store.db import session_scope
    from store.models import ApiKey

    made = client.post("/v1/keys", json={}, headers=org.headers).json()
    headers = {"Authorization": f"Bearer {made['key']}"}
    RECORDER.flush()
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    with session_scope() as session:  # the request itself wrote nothing
        assert session.get(ApiKey, made["id"]).last_used_at is None  # type: ignore[union-attr]
    assert RECORDER.flush() >= 1
    with session_scope() as session:
        first = session.get(ApiKey, made["id"]).last_used_at  # type: ignore[union-attr]
    assert first is not None
    client.get("/v1/jobs", headers=headers)
    RECORDER.flush()
    with session_scope() as session:  # within the minute: not written again
        assert session.get(ApiKey, made["id"]).last_used_at == first  # type: ignore[union-attr]
    row = next(
        k
        for k in client.get("/v1/keys", headers=org.headers).json()["data"]
        if k["id"] == made["id"]
    )
    assert row["last_used_at"] is not None


def test_cli_keys_create_with_scopes_and_expiry(migrated: Any, client: Any) -> None:
    import uuid

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    org_name = f"cli-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "keys", "create", "--org", org_name,
         "--scope", "jobs:read", "--scope", "crawls:write", "--expires-in", "2h"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    raw = out.stdout.strip()
    headers = {"Authorization": f"Bearer {raw}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    denied = client.post("/v1/diagnostics/sleep", json={}, headers=headers)
    assert denied.json()["error"]["details"] == {"required_scope": "jobs:write"}
    from sqlalchemy import select

    from store.db import session_scope
    from store.models import ApiKey
    from store.orgs import hash_key

    with session_scope() as session:
        stored = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(raw)))
        assert stored is not None
        assert sorted(stored.scopes) == ["crawls:write", "jobs:read"]
        assert stored.expires_at is not None
    bad = subprocess.run(
        [sys.executable, "-m", "cli.main", "keys", "create", "--org", org_name,
         "--scope", "jobs:destroy"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "jobs:destroy" in bad.stderr
