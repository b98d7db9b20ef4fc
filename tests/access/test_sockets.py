"""A route that authenticates itself (a WebSocket) applies the same key checks and scope
through ``api.access.authorize_connection``."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from tests.conftest import OrgKey


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].split(" ", 1)[1]


def test_socket_checks_scope_and_key(migrated: Any, org: OrgKey) -> None:
    from fastapi.testclient import TestClient

    from tests.access.conftest import key
    from tests.access.socket_app import app

    with TestClient(app) as client:
        with client.websocket_connect(f"/ws?token={org.key}") as ws:
            assert ws.receive_json() == {"org": org.org_id}
        weak = _token(key(org, ["inference:read"]))
        with (
            pytest.raises(WebSocketDisconnect) as closed,
            client.websocket_connect(f"/ws?token={weak}") as ws,
        ):
            ws.receive_json()
        assert closed.value.code == 4403
        with (
            pytest.raises(WebSocketDisconnect) as unknown,
            client.websocket_connect("/ws?token=cvy_live_nope") as ws,
        ):
            ws.receive_json()
        assert unknown.value.code == 4401
