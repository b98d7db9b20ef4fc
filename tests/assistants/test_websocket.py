"""The WebSocket protocol (docs/assistants-websocket.md) with the ``websockets`` client."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from inference.testing import Stack
from tests.assistants.conftest import create_instance
from tests.conftest import OrgKey, make_org

pytestmark = pytest.mark.e2e


def ws_url(stack: Stack, instance_id: str, token: str | None = None) -> str:
    base = stack.url.replace("http://", "ws://") + f"/v1/instances/{instance_id}/ws"
    return base if token is None else f"{base}?token={token}"


async def frames_until_done(ws: ClientConnection, ids: set[str]) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    pending = set(ids)
    while pending:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
        frames.append(frame)
        if frame["type"] in ("done", "error"):
            pending.discard(frame["id"])
    return frames


async def first_delta(ws: ClientConnection) -> None:
    """Wait for the first delta; an error frame before it fails the test with its message."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if frame["type"] == "delta":
            return
        assert frame["type"] == "start", frame


def test_conversation_two_in_flight_and_ping(
    api: httpx.Client, stack: Stack, tenant: OrgKey
) -> None:
    instance = create_instance(api, max_tokens=16, plan="pro")

    async def scenario() -> None:
        async with connect(ws_url(stack, instance["id"], tenant.key)) as ws:
            # The client offers permessage-deflate; the API declines it by default
            # (CONVEYOR_API_WS_PER_MESSAGE_DEFLATE): no zlib state held per socket.
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv())["type"] == "pong"
            await ws.send(json.dumps({"type": "message", "id": "a", "content": "Hello"}))
            await ws.send(json.dumps({"type": "message", "id": "b", "content": "What is up?"}))
            frames = await frames_until_done(ws, {"a", "b"})
            for key in ("a", "b"):
                mine = [f for f in frames if f.get("id") == key]
                kinds = [f["type"] for f in mine]
                assert kinds[0] == "start" and kinds[-1] == "done", mine[-1]
                assert kinds.count("delta") >= 1  # deltas arrive before done
                done = mine[-1]
                assert done["message"]["content"] == "".join(
                    f["content"] for f in mine if f["type"] == "delta"
                )
                # Sampling may end early on the end-of-text token; never past max_tokens.
                assert 1 <= done["usage"]["completion_tokens"] <= 16
            # Continue the first conversation: the history is used.
            first = next(f for f in frames if f["type"] == "done" and f["id"] == "a")
            await ws.send(
                json.dumps(
                    {
                        "type": "message",
                        "id": "c",
                        "content": "And then?",
                        "conversation_id": first["conversation_id"],
                    }
                )
            )
            third = (await frames_until_done(ws, {"c"}))[-1]
            assert third["conversation_id"] == first["conversation_id"]
            assert third["usage"]["prompt_tokens"] > first["usage"]["total_tokens"]

    asyncio.run(scenario())


def test_cancel_stops_the_job(api: httpx.Client, stack: Stack, tenant: OrgKey) -> None:
    instance = create_instance(api, model="slow", max_tokens=400)

    async def scenario() -> str:
        async with connect(
            ws_url(stack, instance["id"]),
            additional_headers={"Authorization": f"Bearer {tenant.key}"},
        ) as ws:
            await ws.send(json.dumps({"type": "message", "id": "long", "content": "Count"}))
            start = json.loads(await asyncio.wait_for(ws.recv(), 60))
            assert start["type"] == "start"
            await first_delta(ws)
            await ws.send(json.dumps({"type": "cancel", "id": "long"}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if frame["type"] == "error":
                    assert frame["code"] == "cancelled"
                    return str(start["job_id"])

    job_id = asyncio.run(scenario())
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled"


def test_first_frame_auth_bad_token_and_other_org(
    api: httpx.Client, stack: Stack, tenant: OrgKey
) -> None:
    instance = create_instance(api, plan="team")
    other = make_org()

    async def scenario() -> None:
        async with connect(ws_url(stack, instance["id"])) as ws:
            await ws.send(json.dumps({"type": "auth", "token": tenant.key}))
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv())["type"] == "pong"
        async with connect(ws_url(stack, instance["id"], "cvy_live_wrong")) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        async with connect(ws_url(stack, instance["id"], other.key)) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404

    asyncio.run(scenario())


@pytest.mark.parametrize(("plan", "cap"), [("hobby", 1), ("starter", 3)])
def test_socket_cap_per_plan(
    api: httpx.Client, stack: Stack, tenant: OrgKey, plan: str, cap: int
) -> None:
    instance = create_instance(api, plan=plan)

    async def scenario() -> None:
        url = ws_url(stack, instance["id"], tenant.key)
        sockets = [await connect(url) for _ in range(cap)]
        try:
            for ws in sockets:
                await ws.send(json.dumps({"type": "ping"}))
                assert json.loads(await ws.recv())["type"] == "pong"
            async with connect(url) as extra:
                with pytest.raises(ConnectionClosed) as closed:
                    await extra.recv()
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 4429
                assert plan in closed.value.rcvd.reason
        finally:
            for ws in sockets:
                await ws.close()
        await asyncio.sleep(0.3)  # the slots are given back on close
        async with connect(url) as again:
            await again.send(json.dumps({"type": "ping"}))
            assert json.loads(await again.recv())["type"] == "pong"

    asyncio.run(scenario())


def test_a_socket_that_goes_away_cancels_its_jobs(
    api: httpx.Client, stack: Stack, tenant: OrgKey
) -> None:
    instance = create_instance(api, model="slow", max_tokens=400, plan="pro")

    async def scenario() -> str:
        ws = await connect(ws_url(stack, instance["id"], tenant.key))
        await ws.send(json.dumps({"type": "message", "id": "x", "content": "Count"}))
        start = json.loads(await asyncio.wait_for(ws.recv(), 60))
        await first_delta(ws)
        ws.transport.abort()  # no close handshake: the peer just vanishes
        return str(start["job_id"])

    job_id = asyncio.run(scenario())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled":
            break
        time.sleep(0.2)
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
