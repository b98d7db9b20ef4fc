"""Helpers of the access tests: keys with chosen scopes, members with roles."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from tests.conftest import OrgKey


def key(
    org: OrgKey,
    scopes: list[str] | None = None,
    *,
    member_id: str | None = None,
    expires_at: datetime | None = None,
    allowed_cidrs: list[str] | None = None,
) -> dict[str, str]:
    """Headers of a new key of ``org`` (its service account, unless ``member_id``)."""
    from store import orgs
    from store.db import session_scope

    with session_scope() as session:
        raw = orgs.create_key(
            session,
            org.org_id,
            name="access-test",
            member_id=member_id,
            scopes=scopes,
            expires_at=expires_at,
            allowed_cidrs=allowed_cidrs,
        ).raw
    return {"Authorization": f"Bearer {raw}"}


def member(client: Any, org: OrgKey, role: str, scopes: list[str] | None = None) -> dict[str, Any]:
    """A new person in ``org`` with ``role`` and a key of theirs (made by the org's owner key
    through the API): {"id", "headers", "key_id"}."""
    name = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    added = client.post(
        f"/v1/organizations/{org.org_id}/members",
        json={"member": name, "role": role},
        headers=org.headers,
    )
    assert added.status_code == 201, added.text
    body: dict[str, Any] = {"name": name}
    if scopes is not None:
        body["scopes"] = scopes
    created = client.post(
        "/v1/keys", json={"member": name, **body_without_name(body)}, headers=org.headers
    )
    assert created.status_code == 201, created.text
    data = created.json()
    return {
        "id": added.json()["member"],
        "name": name,
        "key_id": data["id"],
        "headers": {"Authorization": f"Bearer {data['key']}"},
    }


def body_without_name(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "name"}


ACCESS_EVENTS = ["key.created", "key.revoked", "member.added", "member.removed"]


def subscribe(org_id: str) -> None:
    """An endpoint of ``org_id`` for the access events, as the API stores it (no DNS here)."""
    from store.db import session_scope
    from webhooks.models import WebhookEndpoint

    with session_scope() as session:
        session.add(
            WebhookEndpoint(
                org_id=org_id,
                url="https://hooks.example.com/conveyor",
                events=ACCESS_EVENTS,
                secret_encrypted="x",
            )
        )


def delivered(org_id: str) -> list[tuple[str, str]]:
    """(event type, JSON payload) of every delivery recorded for ``org_id``."""
    import json

    from sqlalchemy import select

    from store.db import session_scope
    from webhooks.models import WebhookDelivery

    with session_scope() as session:
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.org_id == org_id))
        return [(r.event_type, json.dumps(r.payload, default=str)) for r in rows]
