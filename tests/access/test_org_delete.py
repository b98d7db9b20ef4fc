"""``DELETE /v1/organizations/{id}``: the owner only; keys revoked at once, members removed,
jobs cancelled, deployments and resources torn down by their own deletion jobs, one audit
record; a stranger's organisation and a missing one get the same 404."""

from __future__ import annotations

import uuid
from typing import Any

from tests.access.conftest import delivered, member, subscribe
from tests.access.test_orgs import ORG, strip
from tests.conftest import OrgKey, make_org


def _audit(org_id: str, action: str) -> list[Any]:
    from sqlalchemy import select

    from access.models import AuditRecord
    from store.db import session_scope

    with session_scope() as session:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.org_id == org_id, AuditRecord.action == action)
        ).all()
        session.expunge_all()
        return list(rows)


def test_only_the_owner_deletes_and_strangers_see_404(client: Any, org: OrgKey) -> None:
    admin = member(client, org, "admin")
    developer = member(client, org, "developer")
    viewer = member(client, org, "viewer")
    url = f"/v1/organizations/{org.org_id}"
    by_admin = client.delete(url, headers=admin["headers"])
    assert by_admin.status_code == 403 and "owner" in by_admin.json()["error"]["message"]
    for person in (developer, viewer):
        refused = client.delete(url, headers=person["headers"])
        assert refused.status_code == 403
        assert refused.json()["error"]["details"] == {"required_scope": "organizations:write"}
    # another organisation's id and one that does not exist: the same 404
    stranger = make_org()
    foreign = client.delete(f"/v1/organizations/{stranger.org_id}", headers=org.headers)
    missing = client.delete(f"/v1/organizations/{uuid.uuid4()}", headers=org.headers)
    assert foreign.status_code == missing.status_code == 404
    assert strip(foreign) == strip(missing) and stranger.org_id not in foreign.text
    # nothing changed: the stranger's key and ours still work
    assert client.get("/v1/jobs", headers=stranger.headers).status_code == 200
    assert client.get("/v1/jobs", headers=admin["headers"]).status_code == 200
    assert _audit(org.org_id, "organizations.delete") == []
    assert len(_audit(org.org_id, "organizations.delete.denied")) == 3


def test_delete_revokes_removes_cancels_and_tears_down(client: Any, org: OrgKey) -> None:
    from sqlalchemy import select

    from deployments.models import Deployment
    from rag.models import Endpoint as RagEndpoint
    from resources.models import Resource
    from store.db import session_scope
    from store.models import Job, Membership

    subscribe(org.org_id)
    admin = member(client, org, "admin")
    # someone whose key lives in another organisation and who is a developer here
    home = make_org()
    guest = member(client, home, "developer")
    added = client.post(
        f"/v1/organizations/{org.org_id}/members",
        json={"member": guest["name"], "role": "developer"},
        headers=org.headers,
    )
    assert added.status_code == 201
    as_guest = {**guest["headers"], ORG: org.org_id}
    assert client.get("/v1/jobs", headers=as_guest).status_code == 200
    # work in flight (no worker here: it stays queued) and things that run
    job = client.post(
        "/v1/diagnostics/sleep", json={"seconds": 60, "steps": 1}, headers=org.headers
    ).json()
    with session_scope() as session:  # a running deployment, as its backend left it
        running = Deployment(
            org_id=org.org_id,
            name="app-1",
            model="tiny",
            model_path="/models/tiny",
            runtime="stub",
            backend="local",
            status="running",
        )
        session.add(running)
        public = RagEndpoint(org_id=org.org_id, name="ask", slug=f"ask-{uuid.uuid4().hex[:8]}")
        session.add(public)
        session.flush()
        dep_id, endpoint_id = running.id, public.id
    res = client.post("/v1/resources", json={"type": "volume", "name": "v"}, headers=org.headers)
    assert res.status_code == 202, res.text

    deleted = client.delete(f"/v1/organizations/{org.org_id}", headers=org.headers)
    assert deleted.status_code == 200, deleted.text
    body = deleted.json()
    assert body["id"] == org.org_id and body["deleted"] is True
    assert body["keys_revoked"] == 2  # the owner's and the admin's; the guest's is not its
    assert body["members_removed"] == 3  # the service account, the admin, the guest
    # the sleep, and the resource's provisioning unless a worker of the session finished it
    assert body["jobs_cancelled"] in (1, 2)
    assert len(body["teardown_jobs"]) == 2

    events = [event for event, _ in delivered(org.org_id)]
    assert events.count("key.revoked") == 2 and events.count("member.removed") == 3
    # keys made in it: 401 at once; the guest: its own organisation still works, this one is
    # now the 403 of an organisation that never existed
    assert client.get("/v1/jobs", headers=org.headers).status_code == 401
    assert client.get("/v1/jobs", headers=admin["headers"]).status_code == 401
    assert client.get("/v1/jobs", headers=guest["headers"]).status_code == 200
    gone = client.get("/v1/jobs", headers=as_guest)
    never = client.get("/v1/jobs", headers={**guest["headers"], ORG: str(uuid.uuid4())})
    assert gone.status_code == never.status_code == 403 and strip(gone) == strip(never)
    listed = client.get("/v1/organizations", headers=guest["headers"]).json()["data"]
    assert [o["id"] for o in listed] == [home.org_id]

    with session_scope() as session:
        assert session.get(Job, job["id"]).status == "cancelled"  # type: ignore[union-attr]
        assert (
            session.scalars(select(Membership).where(Membership.org_id == org.org_id)).all() == []
        )
        deployment = session.get(Deployment, dep_id)
        resource = session.get(Resource, res.json()["id"])
        assert session.get(RagEndpoint, endpoint_id) is None  # no longer answers anyone
        assert deployment is not None and deployment.desired == "deleted"
        assert resource is not None and resource.status in ("deleting", "deleted")
        teardown = {deployment.job_id, resource.job_id}
        assert teardown == set(body["teardown_jobs"])
        kinds = {j.kind for j in session.scalars(select(Job).where(Job.id.in_(teardown)))}
    assert kinds == {"deploy", "provision"}
    # one audit record, in the organisation, naming it; no secret
    records = _audit(org.org_id, "organizations.delete")
    assert len(records) == 1
    record = records[0]
    assert (record.target_type, record.target_id, record.status) == (
        "organization",
        org.org_id,
        200,
    )
    assert record.actor_key_id and org.key not in repr(vars(record))
