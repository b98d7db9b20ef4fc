"""The audit log: a record per change (in the change's transaction), per denied call and per
key use from a new address; no secret in any; the admin-scoped list and its filters; the
retention task; the key and member webhook events."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from tests.access.conftest import delivered, key, member, subscribe
from tests.conftest import OrgKey


def _log(client: Any, org: OrgKey, **params: Any) -> list[dict[str, Any]]:
    answer = client.get("/v1/audit-log", params=params, headers=org.headers)
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def test_create_delete_and_denied_calls_are_recorded_without_secrets(
    client: Any, org: OrgKey
) -> None:
    created = client.post(
        "/v1/keys",
        json={"name": "audited", "scopes": ["jobs:read"]},
        headers=org.headers,
    )
    assert created.status_code == 201
    new = created.json()
    records = _log(client, org, action="keys.create")
    assert len(records) == 1
    rec = records[0]
    assert rec["target"] == {"type": "key", "id": new["id"]}
    assert rec["status"] == 201 and rec["org_id"] == org.org_id
    assert rec["actor"]["key_id"] and rec["actor"]["member"]
    assert rec["request_id"].startswith("req_") and rec["user_agent"]
    # a denied call: its own record, with the scope it lacked in the action name
    weak = {"Authorization": f"Bearer {new['key']}"}
    denied = client.post("/v1/diagnostics/sleep", json={}, headers=weak)
    assert denied.status_code == 403
    denials = _log(client, org, action="jobs.sleep.denied")
    assert len(denials) == 1 and denials[0]["status"] == 403
    assert denials[0]["actor"]["key_id"] == new["id"]
    assert denials[0]["request_id"] == denied.headers["X-Request-ID"]
    # a delete
    assert client.delete(f"/v1/keys/{new['id']}", headers=org.headers).status_code == 204
    deletes = _log(client, org, target_id=new["id"], action="keys.delete")
    assert len(deletes) == 1 and deletes[0]["status"] == 204
    # after revocation the key is unknown: 401, recorded without an organisation
    assert client.get("/v1/jobs", headers=weak).status_code == 401
    # filters: actor, created_after
    mine = _log(client, org, actor=new["id"])
    assert {r["action"] for r in mine} == {"jobs.sleep.denied"}
    latest = _log(client, org)[0]["created_at"]
    assert _log(client, org, created_after=latest) == []
    # no secret anywhere in the log
    everything = json.dumps(_log(client, org, limit=200))
    assert new["key"] not in everything and org.key not in everything
    assert "cvy_live_" not in everything


def test_a_failed_change_leaves_no_record(client: Any, org: OrgKey) -> None:
    """The record is in the change's transaction: a change that fails records nothing."""
    assert client.delete("/v1/keys/nonexistent", headers=org.headers).status_code == 404
    assert _log(client, org, action="keys.delete") == []


def test_expired_and_cidr_denials_are_recorded_for_the_keys_organisation(
    client: Any, org: OrgKey
) -> None:
    from common.timeutil import utcnow

    expired = key(org, None, expires_at=utcnow() - timedelta(minutes=1))
    assert client.get("/v1/jobs", headers=expired).status_code == 401
    rows = _log(client, org, action="jobs.read.denied")
    assert [r["status"] for r in rows] == [401]


def test_a_key_used_from_a_new_address_is_recorded_once(client: Any, org: OrgKey) -> None:
    from access.usage import RECORDER

    headers = key(org, None)
    client.get("/v1/jobs", headers=headers)
    client.get("/v1/jobs", headers=headers)
    RECORDER.flush()
    rows = _log(client, org, action="keys.new_address")
    assert len(rows) == 1 and rows[0]["ip"] == "testclient"


def test_audit_log_needs_admin(client: Any, org: OrgKey) -> None:
    reader = key(org, [s for s in __import__("access.scopes").scopes.ALL_SCOPES if s != "admin"])
    answer = client.get("/v1/audit-log", headers=reader)
    assert answer.status_code == 403
    assert answer.json()["error"]["details"] == {"required_scope": "admin"}


def test_audit_log_is_scoped_to_the_organisation(
    client: Any, org: OrgKey, other_org: OrgKey
) -> None:
    client.post("/v1/keys", json={}, headers=other_org.headers)
    assert _log(client, org, action="keys.create") == []
    assert len(_log(client, other_org, action="keys.create")) == 1


def test_retention_purges_old_records(client: Any, org: OrgKey) -> None:
    from access import audit
    from access.audit import RequestInfo
    from access.jobs import purge_audit_log
    from access.models import AuditRecord
    from common.timeutil import utcnow
    from store.db import session_scope

    with session_scope() as session:
        old = audit.record(
            session, org_id=org.org_id, action="keys.create", status=201, info=RequestInfo()
        )
        old.created_at = utcnow() - timedelta(days=401)
        kept = audit.record(
            session, org_id=org.org_id, action="keys.create", status=201, info=RequestInfo()
        )
        kept.created_at = utcnow() - timedelta(days=399)
        old_id, kept_id = old.id, kept.id
    assert purge_audit_log() >= 1
    with session_scope() as session:
        assert session.get(AuditRecord, old_id) is None
        assert session.get(AuditRecord, kept_id) is not None


def test_key_and_member_events_reach_the_organisations_webhooks(client: Any, org: OrgKey) -> None:
    """Each event is recorded as a delivery to the organisation's endpoint (sent after commit
    by the outbox; delivery itself is tests/api_contract/test_webhook_delivery.py's)."""
    subscribe(org.org_id)
    made = client.post("/v1/keys", json={}, headers=org.headers).json()
    client.delete(f"/v1/keys/{made['id']}", headers=org.headers)
    person = member(client, org, "viewer")
    client.delete(f"/v1/organizations/{org.org_id}/members/{person['id']}", headers=org.headers)
    types = [event for event, _ in delivered(org.org_id)]
    payloads = " ".join(payload for _, payload in delivered(org.org_id))
    assert {"key.created", "key.revoked", "member.added", "member.removed"} <= set(types)
    assert made["key"] not in payloads
