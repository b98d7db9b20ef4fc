"""OpenAI-compatible routes: models, chat/completions, completions, embeddings (the Batch API
and its files are ``api.routers.batches``).

The API never loads a model: each request becomes an ``inference`` job; the API waits for it
(like a ``runsync``) and relays what the worker writes to the job's Redis stream — SSE chunks as
they are produced, or the final body. A client that goes away cancels the job. ``?async=true``
or ``Prefer: respond-async`` answers 202 with the job instead. Errors carry both Conveyor's and
OpenAI's fields (``api.errors`` adds ``type``/``param`` on these paths).

A completion whose ``model`` names one of the caller's deployments is proxied to its replicas
instead (``api.routers.deployments.proxy_to_deployment``), normally by ``DeploymentFastPath``
before the routes are matched.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Iterator
from functools import lru_cache
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ValidationError
from starlette.requests import Request as StarletteRequest
from starlette.types import ASGIApp, Receive, Scope, Send

from api import access
from api.contract import bearer_token, replay_body
from api.deps import bearer, require_credentials
from api.errors import error_response
from api.routers.deployments import deployment_models, proxy_to_deployment
from api.schemas import ERROR_RESPONSES
from api.submit import accepted, submit_job_now
from common.errors import ConveyorError, Unauthorized, Unavailable
from common.redis_clients import async_client
from config import get_settings
from inference import relay
from inference.errors import InferenceError, InvalidRequestError, ModelNotFoundError
from inference.registry import configured_models
from inference.schemas import (
    SSE_DONE,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    InferenceJobInput,
    ModelCard,
    ModelList,
)
from store import orgs
from store.db import autocommit, session_scope
from store.jobs import ACTIVE
from store.models import Job
from store.orgs import Principal

router = APIRouter(
    prefix="/v1",
    tags=["inference"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("inference")],
)


def short_lived_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Iterator[Principal]:
    """Authenticate with a session closed at once: a request that waits minutes for its tokens
    must not hold a database connection (``api.deps.get_principal`` keeps it to the end). The
    route's scope is checked (``api.access``); a mutating call's audit record is written after
    the response, in its own small transaction."""
    token = require_credentials(credentials)
    # A request the deployment fast path passed on was authenticated a moment ago: not twice.
    verified = getattr(request.state, VERIFIED_PRINCIPAL, None)
    principal = (
        verified if verified is not None else _authenticate(token, access.selected_org(request))
    )
    if principal is None:
        raise Unauthorized("Invalid or revoked API key.", headers={"WWW-Authenticate": "Bearer"})
    access.authorize(principal, request)
    request.state.principal = principal
    yield principal
    access.audit_change(request, principal, None)


def _authenticate(raw_key: str, org_id: str | None = None) -> Principal | None:
    """The key's principal, read by one statement on an autocommit connection (no BEGIN or
    COMMIT round trips around the SELECT; this runs on every request)."""
    with autocommit() as connection:
        return orgs.authenticate(connection, raw_key, org_id)


CurrentPrincipal = Annotated[Principal, Depends(short_lived_principal)]
VERIFIED_PRINCIPAL = "deployment_fast_path_principal"


class RelayedError(InferenceError):
    """An error the worker reported through the relay, re-raised in the API."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(
            str(error.get("message", "Inference failed.")),
            param=error.get("param"),
            details=error.get("details"),
        )
        self.status_code = status
        self.code = str(error.get("code", "internal_error"))
        self.openai_type = str(error.get("type", "server_error"))  # type: ignore[misc]


# -- shared helpers ------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _configured(models: str, default_embedding: bool) -> dict[str, str]:
    return {s.name: s.kind for s in configured_models(models, default_embedding=default_embedding)}


#: The workers' announced models as last read, and when (monotonic seconds): a request for a
#: model seen within ``ANNOUNCED_FRESH_SECONDS`` needs no Redis round trip; a name not in it is
#: always looked up again, so a model announced a moment ago is found at once.
_announced: tuple[float, dict[str, str]] = (float("-inf"), {})
ANNOUNCED_FRESH_SECONDS = 2.0


async def served_models(*, fresh: bool = True) -> dict[str, str]:
    """name → kind: the configured models plus those inference workers announced
    (``fresh=False``: the announcements read in the last couple of seconds will do)."""
    global _announced
    settings = get_settings()
    models = dict(_configured(settings.models, settings.inference_default_embedding))
    read_at, announced = _announced
    if fresh or time.monotonic() - read_at > ANNOUNCED_FRESH_SECONDS:
        try:
            announced = await relay.announced_models(async_client())
        except Exception as exc:  # the broker's Redis is down: the config still answers
            raise Unavailable("The inference broker is unavailable.") from exc
        _announced = (time.monotonic(), announced)
    models.update(announced)
    return models


async def _check_model(name: str, kind: str) -> None:
    models = await served_models(fresh=False)
    if name not in models:
        models = await served_models()
    if name not in models:
        raise ModelNotFoundError(name)
    if models[name] != kind:
        raise InvalidRequestError(
            f"The model '{name}' is a {models[name]} model; use the matching endpoint.",
            param="model",
        )


def _wants_async(async_: bool, prefer: str | None) -> bool:
    return async_ or (prefer is not None and "respond-async" in prefer.lower())


async def _create(
    principal: Principal,
    payload: InferenceJobInput,
    *,
    webhook: bool,
    request: Request | None = None,
) -> tuple[Job, Any]:
    """Create the inference job (sent once committed), with the call's audit record in the same
    transaction when ``request`` is given; also its per-job webhook view when the answer is the
    job (202), not the generation."""
    return await run_in_threadpool(
        functools.partial(submit_job_now, webhook=webhook, request=request),
        principal,
        "inference",
        payload.model_dump(mode="json", exclude_none=True),
    )


async def submit_inference(
    principal: Principal, payload: InferenceJobInput, request: Request | None = None
) -> JSONResponse:
    """Create the inference job and answer 202 with it."""
    job, webhook = await _create(principal, payload, webhook=True, request=request)
    return accepted(job, webhook=webhook)


async def cancel_inference(job_id: str) -> None:
    """The client went away: flag the worker (fast path) and cancel the job in the store."""
    from jobs.service import emit_job_event
    from store import jobs as job_store
    from store.jobs import JobStatus

    try:
        await relay.request_cancel(async_client(), job_id)
    finally:

        def cancel_in_store() -> None:
            with session_scope() as session:
                won = job_store.transition(
                    session, job_id, to=JobStatus.CANCELLED, from_=list(ACTIVE)
                )
                if won:
                    emit_job_event(session, "job.cancelled", job_id)

        await run_in_threadpool(cancel_in_store)


class _Waiter:
    """Reads one job's relay stream, giving up when no worker answers in time."""

    def __init__(self, job_id: str, request: Request) -> None:
        self.job_id = job_id
        self.request = request
        self.after = "0"
        self.left: list[relay.RelayEvent] = []
        self.started = False
        self.deadline = time.monotonic() + get_settings().inference_wait_seconds
        # The server does not tell a streaming response that its client left: listen for it.
        self.gone = asyncio.Event()
        self._listener = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        while True:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                return

    def close(self) -> None:
        self._listener.cancel()

    async def next_events(self) -> list[relay.RelayEvent]:
        if self.left:  # what came after the first answer in its read
            left, self.left = self.left, []
            return left
        while True:
            events = await relay.read(async_client(), self.job_id, self.after, block_ms=250)
            if self.gone.is_set():
                raise _ClientGone()
            if events:
                self.after = events[-1].id
                self.started = True
                return events
            if time.monotonic() > self.deadline:
                await cancel_inference(self.job_id)
                raise Unavailable(
                    "No inference worker answered in time; the job was cancelled.",
                    details={"job_id": self.job_id},
                )

    async def first_answer(self) -> relay.RelayEvent:
        """Wait for the first event that is not ``started`` (an error raises); the events read
        with it are the next ``next_events``."""
        while True:
            events = await self.next_events()
            for index, event in enumerate(events):
                if event.type == "started":
                    continue
                if event.type == "error":
                    info = event.json()
                    raise RelayedError(int(info["status"]), info["error"])
                self.left = events[index + 1 :]
                return event


class _ClientGone(Exception):
    pass


async def _run_sync(request: Request, principal: Principal, payload: InferenceJobInput) -> Any:
    """Create the job, wait for its body (or stream it), cancel it when the client leaves."""
    job, _ = await _create(principal, payload, webhook=False, request=request)
    waiter = _Waiter(job.id, request)
    headers = {"X-Conveyor-Job-Id": job.id}
    try:
        first = await waiter.first_answer()
    except _ClientGone:
        waiter.close()
        await cancel_inference(job.id)
        return Response(status_code=499)
    except BaseException:
        waiter.close()
        if not waiter.started:
            await cancel_inference(job.id)
        raise
    if first.type == "result":
        waiter.close()
        return Response(first.data, media_type="application/json", headers=headers)
    return StreamingResponse(
        _relay_sse(waiter, first), media_type="text/event-stream", headers=headers
    )


async def _relay_sse(waiter: _Waiter, first: relay.RelayEvent) -> AsyncIterator[bytes]:
    finished = False
    try:
        pending = [first]
        while True:
            for event in pending:
                if event.type == "chunk":  # one chunk a line
                    yield b"".join(
                        b"data: %s\n\n" % line for line in event.data.encode().split(b"\n")
                    )
                elif event.type == "error":
                    yield (
                        b"data: " + json.dumps({"error": event.json()["error"]}).encode() + b"\n\n"
                    )
                    finished = True
                elif event.type == "end":
                    finished = True
                if finished:
                    yield SSE_DONE
                    return
            pending = await waiter.next_events()
    except _ClientGone:
        pass
    finally:
        waiter.close()
        if not finished:
            # The server cancels this generator when the client leaves: shield the cancel.
            with anyio.CancelScope(shield=True):
                await cancel_inference(waiter.job_id)


# -- the deployment fast path -------------------------------------------------------------

PROXIED_PATHS: dict[str, type[ChatCompletionRequest] | type[CompletionRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


class DeploymentFastPath:
    """ASGI: a chat or text completion whose `model` names one of the caller's deployments goes
    straight to the proxy, without FastAPI's route matching, parameter parsing and dependency
    resolution (together about a third of the API's CPU per proxied request).

    It sits inside the contract middlewares (request id, rate limit, body limit), so they apply
    as to any route. The key is checked against the store on every request, as the routes do,
    and the body is validated with the route's own model. Anything else (a model that is not a
    deployment, a missing or bad key, an invalid body, a query string) goes on to the routes,
    which answer exactly as they would have.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        schema = PROXIED_PATHS.get(scope["path"]) if scope["type"] == "http" else None
        token = bearer_token(scope) if schema is not None else None
        if schema is None or token is None or scope["method"] != "POST" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away
        replay = replay_body(body, receive)
        try:
            model = schema.model_validate_json(body).model
        except ValidationError:
            await self.app(scope, replay, send)  # the route answers 400/422
            return
        request = StarletteRequest(scope)
        principal = await run_in_threadpool(_authenticate, token, access.selected_org(request))
        if principal is None or not _may_infer(principal, request):
            await self.app(scope, replay, send)  # the route answers 401/403
            return
        scope.setdefault("state", {})["principal"] = principal
        try:
            response = await proxy_to_deployment(principal, model, scope["path"], body)
        except ConveyorError as exc:
            response = error_response(
                StarletteRequest(scope),
                exc.status_code,
                exc.code,
                exc.message,
                exc.details,
                exc.headers,
            )
        if response is None:  # not a deployment: the inference route, already authenticated
            scope["state"][VERIFIED_PRINCIPAL] = principal
            await self.app(scope, replay, send)
            return
        await response(scope, replay, send)


def _may_infer(principal: Principal, request: StarletteRequest) -> bool:
    """Whether the key may call a deployment from here (else the route answers the denial)."""
    try:
        access.check_key(principal, request)
    except ConveyorError:
        return False
    return access.has_scope(principal, "inference:write")


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


AsyncFlag = Annotated[bool, Query(alias="async", description="Answer 202 with the job.")]
PreferHeader = Annotated[str | None, Header(description="`respond-async` answers 202.")]


# -- routes --------------------------------------------------------------------------------


@router.get("/models", summary="Models served by the inference workers")
async def list_models(principal: CurrentPrincipal) -> dict[str, Any]:
    models = await served_models()
    models.update(await deployment_models(principal))  # the caller's deployments
    cards = [ModelCard(id=name, kind=kind) for name, kind in sorted(models.items())]  # type: ignore[arg-type]
    return ModelList(data=cards).model_dump(exclude_none=True)


@router.post("/chat/completions", summary="OpenAI chat completions (SSE with stream=true)")
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    principal: CurrentPrincipal,
    async_: AsyncFlag = False,
    prefer: PreferHeader = None,
) -> Any:
    deployed = await proxy_to_deployment(
        principal, body.model, "/v1/chat/completions", await request.body()
    )
    if deployed is not None:  # `model` names one of the caller's deployments
        return deployed
    await _check_model(body.model, "chat")
    return await _dispatch(request, principal, "chat.completions", body, async_, prefer)


@router.post("/completions", summary="OpenAI text completions (SSE with stream=true)")
async def completions(
    body: CompletionRequest,
    request: Request,
    principal: CurrentPrincipal,
    async_: AsyncFlag = False,
    prefer: PreferHeader = None,
) -> Any:
    deployed = await proxy_to_deployment(
        principal, body.model, "/v1/completions", await request.body()
    )
    if deployed is not None:  # `model` names one of the caller's deployments
        return deployed
    await _check_model(body.model, "chat")
    return await _dispatch(request, principal, "completions", body, async_, prefer)


@router.post("/embeddings", summary="OpenAI embeddings")
async def embeddings(
    body: EmbeddingRequest,
    request: Request,
    principal: CurrentPrincipal,
    async_: AsyncFlag = False,
    prefer: PreferHeader = None,
) -> Any:
    await _check_model(body.model, "embedding")
    return await _dispatch(request, principal, "embeddings", body, async_, prefer)


async def _dispatch(
    request: Request,
    principal: Principal,
    operation: str,
    body: BaseModel,
    async_: bool,
    prefer: str | None,
) -> Any:
    raw = body.model_dump(mode="json", exclude_none=True)
    if _wants_async(async_, prefer):
        raw["stream"] = False
        payload = InferenceJobInput(operation=operation, body=raw, relay=False)  # type: ignore[arg-type]
        return await submit_inference(principal, payload, request)
    payload = InferenceJobInput(operation=operation, body=raw, relay=True)  # type: ignore[arg-type]
    return await _run_sync(request, principal, payload)
