"""`/v1/instances` (assistants: instances, chat, conversations, the WebSocket, logs, the
incoming-webhook secret) and `POST /v1/webhooks/incoming/{instance_id}`.

A chat stores the user's message and creates an `assistant` job on the `inference` queue
(``assistants.service.start_turn``), committed before anything waits; the API then relays the
tokens the worker writes to the job's relay stream (``inference.relay``), exactly like
`/v1/chat/completions`, and answers with the stored reply. The WebSocket protocol is written down
in docs/assistants-websocket.md. Plan limits (requests/minute, concurrent sockets per instance)
are counted in Redis, so they hold across API processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api import access
from api.deps import CurrentPrincipal, Db
from api.ratelimit import RateLimiter, RateLimitPolicy
from api.routers.openai import (
    CurrentPrincipal as ShortPrincipal,
)
from api.routers.openai import (
    RelayedError,
    _authenticate,
    cancel_inference,
    served_models,
)
from api.schemas import ERROR_RESPONSES, ListQuery
from api.submit import accepted
from assistants import repository, service
from assistants.schemas import ChatRequest, IncomingEvent, InstanceCreate, InstancePatch
from common.errors import ConveyorError, NotFound, RateLimited, Unavailable, ValidationFailed
from common.redis_clients import async_client
from config import get_settings
from inference import relay
from inference.tools import merge_deltas, merged
from store.db import session_scope
from store.jobs import storable
from store.orgs import Principal

router = APIRouter(
    prefix="/v1",
    tags=["assistants"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("assistants")],
)

#: WebSocket close codes (docs/assistants-websocket.md).
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY_SOCKETS = 4429


# --- plan limits in Redis -------------------------------------------------------------------------

_limiters: dict[int, RateLimiter] = {}


def _limiter() -> RateLimiter:
    """This event loop's limiter on the platform's rate-limit storage (created on first use)."""
    loop_id = id(asyncio.get_running_loop())
    found = _limiters.get(loop_id)
    if found is None:
        settings = get_settings()
        found = _limiters[loop_id] = RateLimiter(
            settings.ratelimit_storage_url or settings.resolved_redis_url(),
            strategy=settings.ratelimit_strategy,
            key_prefix="conveyor-assistants",
        )
    return found


async def check_rate(instance_id: str, plan: str) -> None:
    """Count one request against the instance plan's requests/minute; 429 when over."""
    rpm = service.plan_limits(plan).requests_per_minute
    decision = await _limiter().hit(
        f"instance:{instance_id}",
        "POST",
        RateLimitPolicy(read_per_minute=rpm, write_per_minute=rpm),
    )
    if not decision.allowed:
        raise RateLimited(
            f"Instance {instance_id} is over its {plan} plan's {rpm} requests per minute; "
            f"retry in {decision.retry_after} s.",
            details={"limit": rpm, "plan": plan},
            headers=decision.headers(),
        )


# A socket holds a lease (a sorted-set member scored by its expiry) that its heartbeat renews:
# slots of a crashed API process lapse by themselves.
_ACQUIRE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def _slots_key(instance_id: str) -> str:
    return f"conveyor:assistants:{instance_id}:sockets"


async def acquire_slot(instance_id: str, cap: int, slot: str) -> bool:
    ttl = get_settings().assistant_ws_slot_ttl_seconds
    now = time.time()
    result = await async_client().eval(
        _ACQUIRE_SLOT, 1, _slots_key(instance_id), now, now + ttl, cap, slot, int(ttl) + 1
    )
    return bool(result)


async def renew_slot(instance_id: str, slot: str) -> None:
    ttl = get_settings().assistant_ws_slot_ttl_seconds
    redis = async_client()
    await redis.zadd(_slots_key(instance_id), {slot: time.time() + ttl}, xx=True)
    await redis.expire(_slots_key(instance_id), int(ttl) + 1)


async def release_slot(instance_id: str, slot: str) -> None:
    await async_client().zrem(_slots_key(instance_id), slot)


def _page(query: ListQuery) -> repository.Page:
    return repository.Page(
        limit=query.limit,
        cursor=query.cursor,
        created_after=query.created_after,
        created_before=query.created_before,
        descending=query.sort == "-created_at",
    )


# --- instances ----------------------------------------------------------------------------------


@router.post("/instances", status_code=201, summary="Create an assistant instance")
async def create_instance(
    body: InstanceCreate, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    served = await served_models()

    def create() -> dict[str, Any]:
        instance, secret = service.create(db, principal.org_id, body, served)
        return service.view(instance, secret=secret)

    return await run_in_threadpool(create)


@router.get("/instances", summary="List assistant instances (cursor pages)")
def list_instances(
    principal: CurrentPrincipal, db: Db, query: Annotated[ListQuery, Query()]
) -> dict[str, Any]:
    rows, next_cursor = repository.list_instances(db, principal.org_id, _page(query))
    return {"data": [service.view(r) for r in rows], "next_cursor": next_cursor}


@router.get("/instances/{instance_id}", summary="Get an assistant instance")
def get_instance(instance_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return service.view(service.get(db, principal.org_id, instance_id))


@router.patch("/instances/{instance_id}", summary="Update an assistant instance")
def patch_instance(
    instance_id: str, body: InstancePatch, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    instance = service.get(db, principal.org_id, instance_id)
    service.patch(db, instance, body)
    return service.view(instance)


@router.delete("/instances/{instance_id}", status_code=204, summary="Delete an assistant instance")
def delete_instance(instance_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    service.delete(db, service.get(db, principal.org_id, instance_id))
    return Response(status_code=204)


@router.post(
    "/instances/{instance_id}/webhook-secret",
    summary="Rotate the incoming-webhook secret (the new one is shown once)",
)
def rotate_webhook_secret(instance_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    instance = service.get(db, principal.org_id, instance_id)
    secret = service.rotate_secret(db, instance)
    return {"instance_id": instance.id, "webhook_secret": secret}


# --- turns and the token relay --------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceRef:
    """What a turn needs of its instance once the loading session is closed."""

    id: str
    org_id: str
    plan: str


def _load_instance(org_id: str, instance_id: str) -> InstanceRef:
    with session_scope() as session:
        found = service.get(session, org_id, instance_id)
        return InstanceRef(found.id, found.org_id, found.plan)


def _start_turn(
    ref: InstanceRef,
    content: str,
    conversation_id: str | None,
    source: str,
    tool_call_id: str | None = None,
) -> service.Turn:
    """Store the message and create its job in a transaction of its own (committed, the job
    sent, before the caller waits for tokens)."""
    try:
        with session_scope() as session:
            instance = service.get(session, ref.org_id, ref.id)
            service.check_available(session, instance)  # a stopped deployment: 503 + Retry-After
            return service.start_turn(
                session,
                instance,
                content,
                conversation_id,
                source=source,  # type: ignore[arg-type]
                relay=True,
                tool_call_id=tool_call_id,
            )
    except Unavailable as exc:
        _log_refusal(ref, source, exc)
        raise


def _log_refusal(ref: InstanceRef, source: str, exc: ConveyorError) -> None:
    """An instance's error answered by the API itself (the worker logs its own)."""
    with session_scope() as session:
        instance = repository.get_instance(session, ref.org_id, ref.id)
        if instance is not None:
            service.log(
                session, instance, "error", f"{source}: {exc.message}", {"code": str(exc.code)}
            )


def _reply(reply_id: str) -> dict[str, Any]:
    with session_scope() as session:
        reply = repository.get_message(session, reply_id)
        if reply is None:
            raise Unavailable("The reply was not stored (the job was cancelled or failed).")
        view = service.reply_view(reply)
    view["message"]["created_at"] = view["message"]["created_at"].isoformat()
    return view


def _job_failure(job_id: str) -> ConveyorError | None:
    """The job's error when it ended without relaying one (e.g. its worker was lost)."""
    from store.models import Job

    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.status in ("queued", "running", "completed"):
            return None
        error = job.error or {}
        return ConveyorError(
            str(error.get("message", f"The reply job was {job.status}.")),
            code=str(error.get("code", "internal_error")),
            status_code=503 if job.status == "failed" else 409,
        )


async def relay_deltas(job_id: str) -> AsyncIterator[str | dict[str, Any]]:
    """The reply's text chunks as the worker relays them, then its tool calls (whole, OpenAI
    shape: they are complete only at the end); returns at the relay's end, raises the relayed
    error. Gives up (and cancels the job) after ``inference_wait_seconds``."""
    calls: dict[int, dict[str, Any]] = {}
    async for text in _relay_text(job_id, calls):
        yield text
    for call in merged(calls):
        yield call


async def _relay_text(job_id: str, calls: dict[int, dict[str, Any]]) -> AsyncIterator[str]:
    after = "0"
    deadline = time.monotonic() + get_settings().inference_wait_seconds
    last_check = time.monotonic()
    while True:
        events = await relay.read(async_client(), job_id, after, block_ms=250)
        if not events:
            if time.monotonic() > deadline:
                await cancel_inference(job_id)
                raise Unavailable("No inference worker answered in time; the job was cancelled.")
            if time.monotonic() - last_check > 2.0:
                last_check = time.monotonic()
                failure = await run_in_threadpool(_job_failure, job_id)
                if failure is not None:
                    raise failure
            continue
        after = events[-1].id
        # The text of everything read at once goes out as one piece: a reader that fell behind
        # (a busy socket, a loaded API) gets fewer, larger deltas instead of a frame per token.
        texts: list[str] = []
        final: relay.RelayEvent | None = None
        for event in events:
            if event.type == "chunk":
                for line in event.data.split("\n"):
                    for choice in json.loads(line).get("choices") or []:
                        delta = choice.get("delta") or {}
                        merge_deltas(calls, delta.get("tool_calls") or [])
                        text = delta.get("content")
                        if text:  # as stored: PostgreSQL's text holds no NUL
                            texts.append(storable(text))
            elif event.type in ("error", "end", "result"):
                final = event
                break
        if texts:
            yield "".join(texts)
        if final is not None:
            if final.type == "error":
                info = final.json()
                raise RelayedError(int(info["status"]), info["error"])
            return


@router.post(
    "/instances/{instance_id}/chat",
    summary="Send a message; the reply (or SSE events with stream=true)",
)
async def chat(
    instance_id: str, body: ChatRequest, request: Request, principal: ShortPrincipal
) -> Any:
    ref = await run_in_threadpool(_load_instance, principal.org_id, instance_id)
    await check_rate(ref.id, ref.plan)
    turn = await run_in_threadpool(
        _start_turn, ref, body.message, body.conversation_id, "chat", body.tool_call_id
    )
    headers = {"X-Conveyor-Job-Id": turn.job.id}
    if body.stream:
        return StreamingResponse(
            _chat_sse(request, turn), media_type="text/event-stream", headers=headers
        )
    try:
        async for _ in relay_deltas(turn.job.id):
            pass
    except BaseException:
        with anyio.CancelScope(shield=True):
            await cancel_inference(turn.job.id)
        raise
    return JSONResponse(await run_in_threadpool(_reply, turn.reply_id), headers=headers)


def _piece_frame(piece: str | dict[str, Any]) -> dict[str, Any]:
    """A relayed piece as a frame: ``delta`` (text) or ``tool_call`` (a whole call)."""
    if isinstance(piece, str):
        return {"type": "delta", "content": piece}
    return {"type": "tool_call", "tool_call": piece}


def _sse(frame: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(frame, separators=(",", ":")).encode() + b"\n\n"


async def _chat_sse(request: Request, turn: service.Turn) -> AsyncIterator[bytes]:
    """SSE frames shaped like the WebSocket's: start, delta…, done (or error), then [DONE]."""
    finished = False
    try:
        yield _sse(
            {
                "type": "start",
                "conversation_id": turn.conversation_id,
                "message_id": turn.reply_id,
                "job_id": turn.job.id,
            }
        )
        try:
            async for piece in relay_deltas(turn.job.id):
                yield _sse(_piece_frame(piece))
            yield _sse({"type": "done", **await run_in_threadpool(_reply, turn.reply_id)})
        except ConveyorError as exc:
            yield _sse({"type": "error", "code": str(exc.code), "message": exc.message})
        finished = True
        yield b"data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away: stop the generation
            with anyio.CancelScope(shield=True):
                await cancel_inference(turn.job.id)


# --- conversations ------------------------------------------------------------------------------


@router.get("/instances/{instance_id}/conversations", summary="List conversations")
def list_conversations(
    instance_id: str, principal: CurrentPrincipal, db: Db, query: Annotated[ListQuery, Query()]
) -> dict[str, Any]:
    instance = service.get(db, principal.org_id, instance_id)
    rows, next_cursor = repository.list_conversations(db, instance.id, _page(query))
    return {"data": [service.conversation_view(r) for r in rows], "next_cursor": next_cursor}


@router.get(
    "/instances/{instance_id}/conversations/{conversation_id}/messages",
    summary="List a conversation's messages",
)
def list_messages(
    instance_id: str,
    conversation_id: str,
    principal: CurrentPrincipal,
    db: Db,
    query: Annotated[ListQuery, Query()],
) -> dict[str, Any]:
    instance = service.get(db, principal.org_id, instance_id)
    conversation = service.get_conversation(db, instance, conversation_id)
    rows, next_cursor = repository.list_messages(db, conversation.id, _page(query))
    return {"data": [service.message_view(r) for r in rows], "next_cursor": next_cursor}


@router.delete(
    "/instances/{instance_id}/conversations/{conversation_id}",
    status_code=204,
    summary="Delete a conversation",
)
def delete_conversation(
    instance_id: str, conversation_id: str, principal: CurrentPrincipal, db: Db
) -> Response:
    instance = service.get(db, principal.org_id, instance_id)
    service.delete_conversation(db, service.get_conversation(db, instance, conversation_id))
    return Response(status_code=204)


# --- logs -----------------------------------------------------------------------------------------


@router.get("/instances/{instance_id}/logs", summary="Chats, webhook deliveries and errors")
def instance_logs(
    instance_id: str,
    principal: CurrentPrincipal,
    db: Db,
    tail: Annotated[int, Query(ge=1, le=1000)] = 100,
    stream: bool = False,
) -> Any:
    instance = service.get(db, principal.org_id, instance_id)
    lines = repository.tail_logs(db, instance.id, tail)
    if not stream:
        return {"data": [service.log_view(line) for line in lines]}
    return StreamingResponse(
        _follow_logs(instance.id, [service.log_view(line) for line in lines]),
        media_type="text/event-stream",
    )


async def _follow_logs(instance_id: str, first: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    """The tail, then new lines as they are written (polled every half second)."""
    last_id = None
    for line in first:
        yield _sse(json.loads(json.dumps(line, default=str)))
        last_id = line["id"]

    def newer(after_id: str | None) -> list[dict[str, Any]]:
        with session_scope() as session:
            after = None
            if after_id is not None:
                from assistants.models import AssistantLog

                after = session.get(AssistantLog, after_id)
            return [service.log_view(r) for r in repository.logs_after(session, instance_id, after)]

    while True:
        await asyncio.sleep(0.5)
        for line in await run_in_threadpool(newer, last_id):
            yield _sse(json.loads(json.dumps(line, default=str)))
            last_id = line["id"]


# --- incoming webhooks ----------------------------------------------------------------------------


@router.post(
    "/webhooks/incoming/{instance_id}",
    status_code=202,
    summary="An outside event for an instance (Standard Webhooks signature or ?token=)",
    tags=["assistants"],
    dependencies=[access.public_route()],
)
async def incoming_webhook(
    instance_id: str,
    request: Request,
    db: Db,
    token: Annotated[str | None, Query(description="The instance's webhook secret.")] = None,
) -> JSONResponse:
    raw = await request.body()
    instance = await run_in_threadpool(repository.get_instance_any, db, instance_id)
    if instance is None:
        raise NotFound("Instance not found.")
    await run_in_threadpool(service.verify_incoming, instance, request.headers, raw, token)
    try:
        event = IncomingEvent.model_validate_json(raw)
    except ValidationError as exc:
        raise ValidationFailed(
            "The body must be {event, payload}.",
            details=[
                {"loc": ["body", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors()
            ],
        ) from exc
    await check_rate(instance.id, instance.plan)
    webhook_id = request.headers.get("webhook-id")
    delivery = await run_in_threadpool(service.receive_event, db, instance, event, webhook_id)
    from store.models import Job

    job = await run_in_threadpool(db.get, Job, delivery.job_id)
    if job is None:
        raise NotFound("The delivery's job was purged.")
    response = accepted(job)
    if delivery.replay:
        response.status_code = 200
    return response


# --- the WebSocket --------------------------------------------------------------------------------


@router.websocket("/instances/{instance_id}/ws")
async def instance_socket(websocket: WebSocket, instance_id: str, token: str | None = None) -> None:
    """Chat over a WebSocket (protocol: docs/assistants-websocket.md)."""
    await websocket.accept()
    try:
        principal = await access.authorize_connection(
            await _socket_principal(websocket, token), websocket, "assistants:write"
        )
    except ConveyorError as exc:
        code = CLOSE_UNAUTHORIZED if exc.status_code == 401 else CLOSE_FORBIDDEN
        await websocket.close(code, exc.message)
        return
    try:
        ref = await run_in_threadpool(_load_instance, principal.org_id, instance_id)
    except NotFound:
        await websocket.close(CLOSE_NOT_FOUND, "Instance not found.")
        return
    cap = service.plan_limits(ref.plan).sockets
    slot = secrets.token_hex(8)
    if cap and not await acquire_slot(ref.id, cap, slot):
        await websocket.close(
            CLOSE_TOO_MANY_SOCKETS,
            f"The {ref.plan} plan allows {cap} concurrent socket(s) per instance.",
        )
        return
    try:
        await ChatSocket(websocket, ref).run(slot if cap else None)
    finally:
        if cap:
            with anyio.CancelScope(shield=True):
                await release_slot(ref.id, slot)


async def _socket_principal(websocket: WebSocket, token: str | None) -> Principal | None:
    """The key from ``?token=``, the Authorization header, or a first ``auth`` frame."""
    raw = token
    header = websocket.headers.get("authorization", "")
    if raw is None and header.lower().startswith("bearer "):
        raw = header[7:].strip()
    if raw is None:
        try:
            with anyio.fail_after(get_settings().assistant_ws_auth_timeout_seconds):
                frame = json.loads(await websocket.receive_text())
            if isinstance(frame, dict) and frame.get("type") == "auth":
                raw = str(frame.get("token") or "")
        except (TimeoutError, ValueError, WebSocketDisconnect):
            return None
    if not raw:
        return None
    return await run_in_threadpool(_authenticate, raw)


@dataclass
class ChatSocket:
    """One open socket: a reader, one task per message in flight, one writer draining a bounded
    queue (a slow reader makes the producers wait: nothing is buffered without bound, and the
    tokens wait in the job's relay stream)."""

    websocket: WebSocket
    instance: InstanceRef
    outbox: asyncio.Queue[dict[str, Any] | None] = field(init=False)
    inflight: dict[str, tuple[asyncio.Task[None], list[str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.outbox = asyncio.Queue(maxsize=get_settings().assistant_ws_queue_frames)

    async def run(self, slot: str | None) -> None:
        writer = asyncio.ensure_future(self._write())
        heartbeat = asyncio.ensure_future(self._heartbeat(slot)) if slot else None
        try:
            await self._read()
        finally:
            for task, job in list(self.inflight.values()):
                task.cancel()
                if job:
                    with anyio.CancelScope(shield=True):
                        await cancel_inference(job[0])
            for side in (writer, heartbeat):
                if side is not None:
                    side.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await side

    async def _heartbeat(self, slot: str) -> None:
        """Renew this socket's slot lease (a dead process's slots lapse by themselves)."""
        interval = get_settings().assistant_ws_slot_ttl_seconds / 3
        while True:
            await asyncio.sleep(interval)
            await renew_slot(self.instance.id, slot)

    async def _write(self) -> None:
        while True:
            frame = await self.outbox.get()
            if frame is None or self.websocket.application_state != WebSocketState.CONNECTED:
                return
            await self.websocket.send_text(json.dumps(frame, separators=(",", ":")))

    async def send(self, frame: dict[str, Any]) -> None:
        await self.outbox.put(frame)  # waits while the queue is full: back-pressure

    async def _read(self) -> None:
        while True:
            try:
                text = await self.websocket.receive_text()
            except (WebSocketDisconnect, RuntimeError):
                return
            try:
                frame = json.loads(text)
                if not isinstance(frame, dict):
                    raise ValueError("not an object")
            except ValueError:
                await self.send(_error(None, "invalid_json", "Frames are JSON objects."))
                continue
            await self._dispatch(frame)

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "ping":
            await self.send({"type": "pong", "ts": time.time()})
        elif kind in ("message", "tool_result"):
            content = frame.get("content")
            message_id = str(frame.get("id") or secrets.token_hex(6))
            tool_call_id = frame.get("tool_call_id") if kind == "tool_result" else None
            if not isinstance(content, str) or not content:
                await self.send(_error(message_id, "validation_error", "content is required."))
            elif kind == "tool_result" and not (
                isinstance(tool_call_id, str) and frame.get("conversation_id")
            ):
                await self.send(
                    _error(
                        message_id,
                        "validation_error",
                        "A tool_result needs tool_call_id and conversation_id.",
                    )
                )
            elif message_id in self.inflight:
                await self.send(
                    _error(message_id, "conflict", "A message with this id is in flight.")
                )
            else:
                conversation_id = frame.get("conversation_id")
                job: list[str] = []
                task = asyncio.ensure_future(
                    self._answer(message_id, content, conversation_id, job, tool_call_id)
                )
                self.inflight[message_id] = (task, job)
                task.add_done_callback(functools.partial(self._forget, message_id))
        elif kind == "cancel":
            await self._cancel(str(frame.get("id")))
        elif kind == "auth":
            pass  # already authenticated
        else:
            await self.send(_error(frame.get("id"), "validation_error", f"Unknown type {kind!r}."))

    def _forget(self, message_id: str, task: asyncio.Task[None]) -> None:
        found = self.inflight.get(message_id)
        if found is not None and found[0] is task:
            del self.inflight[message_id]

    async def _cancel(self, message_id: str) -> None:
        found = self.inflight.pop(message_id, None)
        if found is None:
            await self.send(_error(message_id, "not_found", "No message in flight with this id."))
            return
        task, job = found
        task.cancel()
        if job:
            await cancel_inference(job[0])
        await self.send(_error(message_id, "cancelled", "The generation was cancelled."))

    async def _answer(
        self,
        message_id: str,
        content: str,
        conversation_id: Any,
        job: list[str],
        tool_call_id: str | None = None,
    ) -> None:
        try:
            await check_rate(self.instance.id, self.instance.plan)
            starting = asyncio.ensure_future(
                run_in_threadpool(
                    _start_turn,
                    self.instance,
                    content,
                    str(conversation_id) if conversation_id else None,
                    "websocket",
                    tool_call_id,
                )
            )
            try:
                turn = await asyncio.shield(starting)
            except asyncio.CancelledError:  # cancelled while its job was being created
                turn = await starting
                await cancel_inference(turn.job.id)
                raise
            job.append(turn.job.id)
            await self.send(
                {
                    "type": "start",
                    "id": message_id,
                    "conversation_id": turn.conversation_id,
                    "message_id": turn.reply_id,
                    "job_id": turn.job.id,
                }
            )
            async for piece in relay_deltas(turn.job.id):
                await self.send({**_piece_frame(piece), "id": message_id})
            reply = await run_in_threadpool(_reply, turn.reply_id)
            await self.send({"type": "done", "id": message_id, **reply})
        except ConveyorError as exc:
            frame = _error(message_id, str(exc.code), exc.message)
            if "Retry-After" in exc.headers:
                frame["retry_after"] = int(exc.headers["Retry-After"])
            await self.send(frame)


def _error(message_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "id": message_id, "code": code, "message": message}
