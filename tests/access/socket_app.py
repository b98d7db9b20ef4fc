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
    try:
        principal = await access.authorize_connection(
            _authenticate(token, access.selected_org(websocket)) if token else None,
            websocket,
            "inference:write",
        )
    except ConveyorError as exc:
        await websocket.close(code=4000 + exc.status_code)
        return
    await websocket.accept()
    await websocket.send_json({"org": principal.org_id})
    await websocket.close()
