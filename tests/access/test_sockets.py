"""A route that authenticates itself (a WebSocket) applies the same key checks and scope
through ``api.access.authorize_connection``, and its denials are audited like HTTP ones; so
are the denials of the routes that authenticate outside FastAPI's dependencies (the polling
hot path, the deployment fast path of the completions routes)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from tests.conftest import OrgKey


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].split(" ", 1)[1]


def _denials(**where: Any) -> list[dict[str, Any]]:
    """Audit records (as the API shows them) with these column values, oldest first."""
    from sqlalchemy import select

    from access import audit
    from access.models import AuditRecord
    from store.db import session_scope

    with session_scope() as session:
        stmt = select(AuditRecord).order_by(AuditRecord.created_at)
        for column, value in where.items():
            stmt = stmt.where(getattr(AuditRecord, column) == value)
        return [audit.view(row) for row in session.scalars(stmt)]


def _closed_with(client: Any, url: str) -> int:
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect(url) as ws:
        ws.receive_json()
    return int(closed.value.code)


def test_socket_checks_scope_and_key_and_audits_denials(migrated: Any, org: OrgKey) -> None:
    from fastapi.testclient import TestClient

    from tests.access.conftest import key
    from tests.access.socket_app import app

    with TestClient(app) as client:
        with client.websocket_connect(f"/ws?token={org.key}") as ws:
            assert ws.receive_json() == {"org": org.org_id}
        weak = _token(key(org, ["inference:read"]))
        assert _closed_with(client, f"/ws?token={weak}") == 4403
        unknown = "cvy_live_nope" + org.org_id[:8]
        assert _closed_with(client, f"/ws?token={unknown}") == 4401
        assert _closed_with(client, "/ws") == 4401
    from store import orgs
    from store.db import session_scope

    with session_scope() as session:
        weak_principal = orgs.authenticate(session, weak)
        assert weak_principal is not None
    forbidden = _denials(actor_key_id=weak_principal.key_id)
    assert [(r["action"], r["status"], r["org_id"]) for r in forbidden] == [
        ("inference.connect.denied", 403, org.org_id)
    ]
    assert forbidden[0]["actor"]["member"]
    unauthorised = _denials(action="inference.connect.denied", status=401)
    assert len(unauthorised) >= 2 and all(r["org_id"] is None for r in unauthorised)
    # the token travels in the query string: no record holds it
    text = repr(forbidden + unauthorised)
    assert weak not in text and unknown not in text and "cvy_live_" not in text


def test_fast_path_denials_are_audited(client: Any, org: OrgKey) -> None:
    """The polling hot path and the deployment fast path authenticate outside FastAPI's
    dependencies; their 401/403 are recorded like any other route's."""
    from store import orgs
    from store.db import session_scope
    from tests.access.conftest import key

    job = client.post(
        "/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1}, headers=org.headers
    ).json()
    weak_headers = key(org, ["inference:read"])
    with session_scope() as session:
        weak = orgs.authenticate(session, _token(weak_headers))
        assert weak is not None
    poll = client.get(f"/v1/jobs/{job['id']}", headers=weak_headers)
    assert poll.status_code == 403
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "any-deployment", "messages": [{"role": "user", "content": "hi"}]},
        headers=weak_headers,
    )
    assert chat.status_code == 403
    records = _denials(actor_key_id=weak.key_id)
    assert [(r["action"], r["status"]) for r in records] == [
        ("jobs.read.denied", 403),
        (records[1]["action"], 403),
    ]
    assert records[1]["action"].startswith("inference.") and records[1]["action"].endswith(
        ".denied"
    )
    assert records[0]["request_id"] == poll.headers["X-Request-ID"]
    assert records[1]["request_id"] == chat.headers["X-Request-ID"]
    # an unknown key on the polling hot path: a 401 record (no organisation to file it under)
    before = len(_denials(action="jobs.read.denied", status=401))
    bad = client.get(f"/v1/jobs/{job['id']}", headers={"Authorization": "Bearer cvy_live_bad"})
    assert bad.status_code == 401
    assert len(_denials(action="jobs.read.denied", status=401)) == before + 1
