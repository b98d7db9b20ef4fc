"""Helpers of the resources REST API tests (poll a resource, provision, back up, delete)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

BOUND_APP = str(Path(__file__).with_name("bound_app.py"))


def wait_resource(
    client: Any,
    rid: str,
    headers: dict[str, str],
    statuses: tuple[str, ...] = ("ready", "failed"),
    timeout: float = 90,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.get(f"/v1/resources/{rid}", headers=headers)
        if r.status_code == 404 and "deleted" in statuses:
            return {"status": "deleted"}
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"resource still {body.get('status')}: {body}")


def provision(client: Any, org: Any, **payload: Any) -> dict[str, Any]:
    payload.setdefault("name", f"r-{secrets.token_hex(4)}")
    r = client.post("/v1/resources", json=payload, headers=org.headers)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "provisioning" and body["links"]["job"]
    ready = wait_resource(client, body["id"], org.headers)
    assert ready["status"] == "ready", ready
    return ready


def creds(client: Any, org: Any, rid: str) -> dict[str, Any]:
    r = client.get(f"/v1/resources/{rid}/credentials", headers=org.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def backup(client: Any, org: Any, rid: str) -> dict[str, Any]:
    r = client.post(f"/v1/resources/{rid}/backups", headers=org.headers)
    assert r.status_code == 202, r.text
    bid = r.json()["id"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        b = client.get(f"/v1/resources/{rid}/backups/{bid}", headers=org.headers).json()
        if b["status"] == "failed" or b["verified_at"]:
            return dict(b)
        time.sleep(0.1)
    raise AssertionError(f"backup not verified: {b}")


def delete(client: Any, org: Any, rid: str) -> None:
    for _ in range(2):  # idempotent
        r = client.delete(f"/v1/resources/{rid}?purge_backups=true", headers=org.headers)
        assert r.status_code in (202, 404), r.text
    wait_resource(client, rid, org.headers, statuses=("deleted",))
