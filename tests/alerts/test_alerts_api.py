"""``/v1/alerts``: create, read, list (cursor pages), patch, delete, events; validation errors
are the 422 envelope; another organisation's rule is a 404."""

from __future__ import annotations

from typing import Any

import pytest

from tests.alerts.conftest import add_deployment, create_alert
from tests.conftest import OrgKey

ERROR_RATE = {"type": "error_rate", "kind": "diagnostics", "ratio": 0.5, "window_seconds": 60}


def test_create_get_list_patch_delete(client: Any, org: OrgKey) -> None:
    created = create_alert(
        client, org, {"name": "diag errors", "condition": {**ERROR_RATE, "for": 30}}
    )
    assert created["id"].startswith("alrt_")
    assert created["state"] == "ok" and created["enabled"] is True
    assert created["condition"]["for_seconds"] == 30
    assert created["channels"] == [{"type": "webhook"}]
    got = client.get(f"/v1/alerts/{created['id']}", headers=org.headers)
    assert got.status_code == 200 and got.json()["name"] == "diag errors"

    for i in range(3):
        create_alert(client, org, {"name": f"more {i}", "condition": ERROR_RATE})
    page = client.get("/v1/alerts?limit=2", headers=org.headers).json()
    assert len(page["data"]) == 2 and page["next_cursor"]
    rest = client.get(f"/v1/alerts?limit=2&cursor={page['next_cursor']}", headers=org.headers)
    ids = [a["id"] for a in page["data"]] + [a["id"] for a in rest.json()["data"]]
    assert len(set(ids)) == 4 and rest.json()["next_cursor"] is None

    patched = client.patch(
        f"/v1/alerts/{created['id']}", json={"name": "renamed", "enabled": False},
        headers=org.headers,
    )  # fmt: skip
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "renamed" and patched.json()["enabled"] is False
    events = client.get(f"/v1/alerts/{created['id']}/events", headers=org.headers)
    assert events.status_code == 200 and events.json() == {"data": [], "next_cursor": None}

    assert client.delete(f"/v1/alerts/{created['id']}", headers=org.headers).status_code == 204
    assert client.get(f"/v1/alerts/{created['id']}", headers=org.headers).status_code == 404


@pytest.mark.parametrize(
    ("condition", "where"),
    [
        ({"type": "nope"}, "condition"),
        ({"type": "error_rate", "kind": "no-such-kind", "ratio": 0.5}, "condition"),
        ({"type": "error_rate", "kind": "diagnostics", "ratio": 1.5}, "ratio"),
        ({"type": "budget", "amount_micros": 5, "percent_of_credits": 50}, "condition"),
        ({"type": "budget"}, "condition"),
        ({"type": "queue_backlog", "queue": "nowhere", "depth": 1}, "condition"),
        ({"type": "queue_backlog", "queue": "crawl"}, "condition"),
        ({"type": "usage", "meter": "gpu_seconds", "threshold": -1}, "threshold"),
        ({"type": "deployment_status", "subject_id": "dep_x", "statuses": ["running"]}, "0"),
        ({**ERROR_RATE, "for": -1}, "for"),
        ({**ERROR_RATE, "surprise": 1}, "surprise"),
    ],
)
def test_bad_condition_is_a_422_envelope(
    client: Any, org: OrgKey, condition: dict[str, Any], where: str
) -> None:
    response = client.post(
        "/v1/alerts", json={"name": "bad", "condition": condition}, headers=org.headers
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["request_id"].startswith("req_")
    assert any(
        where in [str(p) for p in d["loc"]] or where in str(d["loc"]) for d in error["details"]
    )


def test_unknown_deployment_and_email_without_smtp_are_422(client: Any, org: OrgKey) -> None:
    missing = client.post(
        "/v1/alerts",
        json={"name": "x", "condition": {"type": "deployment_status", "subject_id": "dep_nope"}},
        headers=org.headers,
    )
    assert missing.status_code == 422
    assert missing.json()["error"]["details"][0]["loc"] == ["body", "condition", "subject_id"]
    email = client.post(
        "/v1/alerts",
        json={
            "name": "x",
            "condition": ERROR_RATE,
            "channels": [{"type": "email", "to": ["ops@example.com"]}],
        },
        headers=org.headers,
    )
    assert email.status_code == 422
    assert "CONVEYOR_SMTP_HOST" in email.json()["error"]["message"]
    bad_address = client.post(
        "/v1/alerts",
        json={"name": "x", "condition": ERROR_RATE, "channels": [{"type": "email", "to": ["x"]}]},
        headers=org.headers,
    )
    assert bad_address.status_code == 422


def test_another_organisations_alert_is_not_found(
    client: Any, org: OrgKey, other_org: OrgKey
) -> None:
    theirs = create_alert(client, other_org, {"name": "theirs", "condition": ERROR_RATE})
    for method, path in [
        ("GET", f"/v1/alerts/{theirs['id']}"),
        ("PATCH", f"/v1/alerts/{theirs['id']}"),
        ("DELETE", f"/v1/alerts/{theirs['id']}"),
        ("GET", f"/v1/alerts/{theirs['id']}/events"),
    ]:
        kwargs: dict[str, Any] = {"json": {"name": "mine"}} if method == "PATCH" else {}
        response = client.request(method, path, headers=org.headers, **kwargs)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    assert client.get("/v1/alerts", headers=org.headers).json()["data"] == []
    # Nor can a rule watch another organisation's deployment.
    their_deployment = add_deployment(other_org)
    response = client.post(
        "/v1/alerts",
        json={
            "name": "spy",
            "condition": {"type": "deployment_status", "subject_id": their_deployment},
        },
        headers=org.headers,
    )
    assert response.status_code == 422
    assert client.get(f"/v1/alerts/{theirs['id']}", headers=other_org.headers).json()["name"] == (
        "theirs"
    )


def test_unknown_query_parameter_and_bad_cursor_are_422(client: Any, org: OrgKey) -> None:
    assert client.get("/v1/alerts?bogus=1", headers=org.headers).status_code == 422
    assert client.get("/v1/alerts?cursor=!!!", headers=org.headers).status_code == 422
