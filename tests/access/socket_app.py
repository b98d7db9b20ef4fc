"""A WebSocket route that authenticates itself (like the assistants' socket), for
``test_sockets``: the key from ``?token=``, then ``api.access.authorize_connection``."""

from __future__ import annotations

from fastapi import FastAPI, WebSocket

from api import access
from api.routers.openai import _authenticate
from common.errors import ConveyorError

app = FastAPI()


@app.websocket("/ws")
async def socket(websocket: WebSocket, token: str = "") -> None:
    principal = _authenticate(token, access.selected_org(websocket))
    if principal is None:
        await websocket.close(code=4401)
        return
    try:
        access.authorize_connection(principal, websocket, "inference:write")
    except ConveyorError as exc:
        await websocket.close(code=4000 + exc.status_code)
        return
    await websocket.accept()
    await websocket.send_json({"org": principal.org_id})
    await websocket.close()
