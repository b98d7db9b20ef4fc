"""Members of several organisations: X-Organization-ID (a member org works; a non-member and
a missing org get the same 403), organisations and members, and role caps."""

from __future__ import annotations

import uuid
from typing import Any

from tests.access.conftest import member
from tests.conftest import OrgKey, make_org

ORG = "X-Organization-ID"


def _org_of(client: Any, headers: dict[str, str]) -> str:
    """The organisation a request acts in, seen through a job it creates."""
    job = client.post("/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1}, headers=headers)
    assert job.status_code in (200, 201, 202), job.text
    from store.db import session_scope
    from store.models import Job

    with session_scope() as session:
        found = session.get(Job, job.json()["id"])
        assert found is not None
        return found.org_id


def strip(response: Any) -> dict[str, Any]:
    """The error without its request id (which differs per request)."""
    return {k: v for k, v in response.json()["error"].items() if k != "request_id"}


def test_x_organization_id_member_nonmember_missing(client: Any, org: OrgKey) -> None:
    created = client.post(
        "/v1/organizations", json={"name": f"second-{uuid.uuid4().hex[:8]}"}, headers=org.headers
    )
    assert created.status_code == 201, created.text
    second = created.json()
    assert second["role"] == "owner"
    listed = {
        o["id"]: o["role"]
        for o in client.get("/v1/organizations", headers=org.headers).json()["data"]
    }
    assert listed == {org.org_id: "owner", second["id"]: "owner"}
    # default organisation, then the selected one, with one key
    assert _org_of(client, org.headers) == org.org_id
    assert _org_of(client, {**org.headers, ORG: second["id"]}) == second["id"]
    # the job of one organisation is not visible from the other (the polling hot path too)
    job = client.post(
        "/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1}, headers=org.headers
    ).json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=org.headers).status_code == 200
    assert (
        client.get(f"/v1/jobs/{job['id']}", headers={**org.headers, ORG: second["id"]}).status_code
        == 404
    )
    # a stranger's organisation and one that does not exist: the same answer
    stranger = make_org()
    foreign = client.get("/v1/jobs", headers={**org.headers, ORG: stranger.org_id})
    missing = client.get("/v1/jobs", headers={**org.headers, ORG: str(uuid.uuid4())})
    assert foreign.status_code == missing.status_code == 403
    assert strip(foreign) == strip(missing)
    assert stranger.org_id not in foreign.text
    poll_foreign = client.get(
        f"/v1/jobs/{job['id']}", headers={**org.headers, ORG: stranger.org_id}
    )
    poll_missing = client.get(
        f"/v1/jobs/{job['id']}", headers={**org.headers, ORG: str(uuid.uuid4())}
    )
    assert strip(poll_foreign) == strip(poll_missing) and poll_foreign.status_code == 403


def test_members_list_add_remove(client: Any, org: OrgKey) -> None:
    dev = member(client, org, "developer")
    members = client.get(f"/v1/organizations/{org.org_id}/members", headers=org.headers).json()[
        "data"
    ]
    roles = {m["name"]: m["role"] for m in members}
    assert roles[dev["name"]] == "developer"
    assert any(r == "owner" for r in roles.values())
    assert client.get("/v1/jobs", headers=dev["headers"]).status_code == 200
    removed = client.delete(
        f"/v1/organizations/{org.org_id}/members/{dev['id']}", headers=org.headers
    )
    assert removed.status_code == 204
    # its key no longer acts in the organisation
    assert client.get("/v1/jobs", headers=dev["headers"]).status_code == 403
    # members of another organisation are not reachable through this one
    other = make_org()
    assert (
        client.get(f"/v1/organizations/{other.org_id}/members", headers=org.headers).status_code
        == 404
    )


def test_a_member_of_two_organisations_uses_one_key_in_both(client: Any, org: OrgKey) -> None:
    other = make_org()
    person = member(client, org, "developer")
    added = client.post(
        f"/v1/organizations/{other.org_id}/members",
        json={"member": person["name"], "role": "viewer"},
        headers=other.headers,
    )
    assert added.status_code == 201
    both = {
        o["id"]: o["role"]
        for o in client.get("/v1/organizations", headers=person["headers"]).json()["data"]
    }
    assert both == {org.org_id: "developer", other.org_id: "viewer"}
    in_other = {**person["headers"], ORG: other.org_id}
    assert client.get("/v1/jobs", headers=in_other).status_code == 200
    # a viewer there: read only
    denied = client.post("/v1/diagnostics/sleep", json={}, headers=in_other)
    assert denied.status_code == 403
    assert denied.json()["error"]["details"] == {"required_scope": "jobs:write"}
    # a developer at home: writes
    assert (
        client.post(
            "/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1}, headers=person["headers"]
        ).status_code
        == 202
    )


def test_role_caps(client: Any, org: OrgKey) -> None:
    viewer = member(client, org, "viewer")
    developer = member(client, org, "developer")
    admin = member(client, org, "admin")
    # viewer: read only, even with a key holding every scope
    assert client.get("/v1/jobs", headers=viewer["headers"]).status_code == 200
    assert client.get("/v1/usage", headers=viewer["headers"]).status_code == 200
    for headers, role in ((viewer["headers"], "viewer"),):
        answer = client.post("/v1/webhooks", json={"url": "https://example.com/h"}, headers=headers)
        assert answer.status_code == 403, role
    # developer: no organisation administration, no audit log, only its own keys
    dev_add = client.post(
        f"/v1/organizations/{org.org_id}/members",
        json={"member": "x@example.com"},
        headers=developer["headers"],
    )
    assert dev_add.status_code == 403
    assert dev_add.json()["error"]["details"] == {"required_scope": "organizations:write"}
    assert client.get("/v1/audit-log", headers=developer["headers"]).json()["error"]["details"] == {
        "required_scope": "admin"
    }
    own = {k["id"] for k in client.get("/v1/keys", headers=developer["headers"]).json()["data"]}
    assert developer["key_id"] in own and viewer["key_id"] not in own
    assert (
        client.delete(f"/v1/keys/{viewer['key_id']}", headers=developer["headers"]).status_code
        == 404
    )
    other_key = client.post(
        "/v1/keys", json={"member": viewer["name"]}, headers=developer["headers"]
    )
    assert other_key.status_code == 403
    # admin: manages members and keys of others, but cannot make owners
    assert client.get("/v1/audit-log", headers=admin["headers"]).status_code == 200
    everyone = {
        k["id"]
        for k in client.get("/v1/keys", params={"limit": 100}, headers=admin["headers"]).json()[
            "data"
        ]
    }
    assert {viewer["key_id"], developer["key_id"]} <= everyone
    promote = client.post(
        f"/v1/organizations/{org.org_id}/members",
        json={"member": developer["name"], "role": "owner"},
        headers=admin["headers"],
    )
    assert promote.status_code == 403
    demote = client.post(
        f"/v1/organizations/{org.org_id}/members",
        json={"member": developer["name"], "role": "viewer"},
        headers=admin["headers"],
    )
    assert demote.status_code == 201
    assert (
        client.post("/v1/diagnostics/sleep", json={}, headers=developer["headers"]).status_code
        == 403
    )


def test_the_last_owner_stays(client: Any, org: OrgKey) -> None:
    members = client.get(f"/v1/organizations/{org.org_id}/members", headers=org.headers).json()[
        "data"
    ]
    owner = next(m for m in members if m["role"] == "owner")
    answer = client.delete(
        f"/v1/organizations/{org.org_id}/members/{owner['member']}", headers=org.headers
    )
    assert answer.status_code == 409


def test_a_selected_organisation_draws_from_its_own_plan_and_budget(client: Any) -> None:
    """``X-Organization-ID`` moves the request onto the selected organisation's rate limit: its
    plan's budget (not the key's default organisation's) and a counter of its own."""
    from sqlalchemy import update

    from store.db import session_scope
    from store.models import Organization

    home = make_org(plan="free")  # 120 reads a minute
    person = member(client, home, "developer")
    other = make_org(plan="starter")  # 600 reads a minute
    added = client.post(
        f"/v1/organizations/{other.org_id}/members",
        json={"member": person["name"], "role": "viewer"},
        headers=other.headers,
    )
    assert added.status_code == 201
    at_home = client.get("/v1/jobs", headers=person["headers"])
    assert at_home.headers["X-RateLimit-Limit"] == "120"
    home_left = int(at_home.headers["X-RateLimit-Remaining"])
    away = [
        client.get("/v1/jobs", headers={**person["headers"], ORG: other.org_id}) for _ in range(3)
    ]
    assert [a.status_code for a in away] == [200] * 3
    assert {a.headers["X-RateLimit-Limit"] for a in away} == {"600"}
    assert [int(a.headers["X-RateLimit-Remaining"]) for a in away] == [599, 598, 597]
    # the home organisation's budget did not pay for them
    again = client.get("/v1/jobs", headers=person["headers"])
    assert int(again.headers["X-RateLimit-Remaining"]) == home_left - 1
    # a plan change of the selected organisation shows once the short lookup cache is gone
    with session_scope() as session:
        session.execute(
            update(Organization).where(Organization.id == other.org_id).values(plan="pro")
        )
    client.app.state.key_lookup.forget()
    switched = client.get("/v1/jobs", headers={**person["headers"], ORG: other.org_id})
    assert switched.headers["X-RateLimit-Limit"] == "3000"
    # an organisation the member is not in: the 403 counts against the key's home budget
    stranger = make_org(plan="pro")
    refused = client.get("/v1/jobs", headers={**person["headers"], ORG: stranger.org_id})
    assert refused.status_code == 403 and refused.headers["X-RateLimit-Limit"] == "120"
    # the key's organisations are looked up once: made-up ids cost the limiter no query
    lookup = client.app.state.key_lookup
    loads: list[str] = []
    real = lookup._load
    lookup._load = lambda token: loads.append(token) or real(token)
    try:
        for _ in range(3):
            made_up = client.get("/v1/jobs", headers={**person["headers"], ORG: str(uuid.uuid4())})
            assert made_up.status_code == 403
    finally:
        del lookup._load
    assert loads == []
