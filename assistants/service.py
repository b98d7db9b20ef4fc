"""The assistants rules: instances, turns of a conversation, incoming webhooks, logs, usage.

Functions take the caller's session and never commit. A turn (a chat message, a WebSocket
message or a verified incoming webhook) stores the user message and creates an ``assistant`` job
on the ``inference`` queue whose worker writes the reply (``assistants.jobs``); the reply's id is
chosen here so the API knows which row will hold the answer. Instances on a model deployment are
answered through the deployment proxy by the API instead (:func:`open_turn` + :func:`store_reply`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from assistants import repository
from assistants.errors import AssistantModelNotFound
from assistants.models import (
    AssistantConversation,
    AssistantInstance,
    AssistantLog,
    AssistantMessage,
    AssistantWebhookDelivery,
    new_message_id,
)
from assistants.schemas import (
    IncomingEvent,
    InstanceCreate,
    InstancePatch,
    ReplyJobInput,
    Source,
)
from common.errors import NotFound, Unauthorized, ValidationFailed
from common.timeutil import utcnow
from config import get_settings
from inference.tools import tool_dicts
from jobs.service import create_job
from plans.service import period_key
from store.jobs import storable
from store.models import Job
from webhooks import secretbox
from webhooks.events import emit
from webhooks.signing import WebhookVerificationFailed, generate_secret, verify

KIND = "assistant"
UNLIMITED_SOCKETS = 0
#: Deployment states that refuse a new instance (a stopped one is accepted: its chats answer 503
#: with Retry-After until it is started again).
DEAD_DEPLOYMENT = ("failed", "deleting", "deleted")


# --- plans ------------------------------------------------------------------------------------


def _table(raw: str) -> dict[str, int]:
    pairs = (item.split("=", 1) for item in raw.split(",") if "=" in item)
    return {name.strip(): int(value) for name, value in pairs}


@dataclass(frozen=True)
class PlanLimits:
    requests_per_minute: int
    sockets: int  # 0: unlimited


def plan_limits(plan: str) -> PlanLimits:
    """An instance plan's limits, from settings (the reference's table as defaults)."""
    settings = get_settings()
    rpm = _table(settings.assistant_plan_requests_per_minute)
    sockets = _table(settings.assistant_plan_sockets)
    return PlanLimits(rpm.get(plan, 60), sockets.get(plan, 1))


# --- instances --------------------------------------------------------------------------------


def view(instance: AssistantInstance, *, secret: str | None = None) -> dict[str, Any]:
    limits = plan_limits(instance.plan)
    body: dict[str, Any] = {
        "id": instance.id,
        "object": "instance",
        "name": instance.name,
        "model": instance.model,
        "backend": instance.backend,
        "plan": instance.plan,
        "limits": {
            "requests_per_minute": limits.requests_per_minute,
            "concurrent_sockets": limits.sockets or None,
        },
        "system_prompt": instance.system_prompt,
        "temperature": instance.temperature,
        "max_tokens": instance.max_tokens,
        "tools": instance.tools,
        "message_template": instance.message_template,
        "log_content": instance.log_content,
        "webhook_url": f"/v1/webhooks/incoming/{instance.id}",
        "created_at": instance.created_at,
        "updated_at": instance.updated_at,
    }
    if secret is not None:
        body["webhook_secret"] = secret
    return body


def _backend(session: Session, org_id: str, model: str, served: Mapping[str, str]) -> str:
    """``inference`` for a chat model of the workers, ``deployment`` for a live deployment."""
    if served.get(model) == "chat":
        return "inference"
    from deployments import repository as deployments

    dep = deployments.get_by_name(session, org_id, model)
    if dep is not None and dep.status not in DEAD_DEPLOYMENT:
        return "deployment"
    names = sorted(name for name, kind in served.items() if kind == "chat")
    names += [
        d.name
        for d in deployments.list_live_names(session, org_id)
        if d.status not in DEAD_DEPLOYMENT
    ]
    raise AssistantModelNotFound(model, sorted(set(names)))


def create(
    session: Session, org_id: str, body: InstanceCreate, served: Mapping[str, str]
) -> tuple[AssistantInstance, str]:
    """A new instance and its incoming-webhook secret (shown once)."""
    backend = _backend(session, org_id, body.model, served)
    secret = generate_secret()
    instance = AssistantInstance(
        org_id=org_id,
        name=body.name,
        model=body.model,
        backend=backend,
        plan=body.plan or get_settings().assistant_default_plan,
        system_prompt=body.system_prompt,
        temperature=body.temperature,
        max_tokens=body.max_tokens,
        tools=tool_dicts(body.tools),
        message_template=body.message_template,
        log_content=body.log_content,
        webhook_secret_encrypted=secretbox.encrypt(secret),
    )
    session.add(instance)
    session.flush()
    emit(session, "instance.created", org_id, view(instance))
    return instance, secret


def get(session: Session, org_id: str, instance_id: str) -> AssistantInstance:
    instance = repository.get_instance(session, org_id, instance_id)
    if instance is None:
        raise NotFound("Instance not found.")
    return instance


def patch(session: Session, instance: AssistantInstance, body: InstancePatch) -> None:
    changes = body.model_dump(exclude_unset=True)
    if body.tools is not None:
        changes["tools"] = tool_dicts(body.tools)
    for field, value in changes.items():
        if value is None and field in ("name", "plan", "tools", "message_template", "log_content"):
            raise ValidationFailed(
                f"{field} cannot be null.",
                details=[{"loc": ["body", field], "msg": "may not be null", "type": "value_error"}],
            )
        setattr(instance, field, value)
    instance.updated_at = utcnow()
    session.flush()


def delete(session: Session, instance: AssistantInstance) -> None:
    instance.deleted_at = utcnow()
    session.flush()
    emit(session, "instance.deleted", instance.org_id, view(instance))


def rotate_secret(session: Session, instance: AssistantInstance) -> str:
    secret = generate_secret()
    instance.webhook_secret_encrypted = secretbox.encrypt(secret)
    instance.updated_at = utcnow()
    session.flush()
    log(session, instance, "webhook", "incoming-webhook secret rotated")
    return secret


# --- conversations ------------------------------------------------------------------------------


def message_view(message: AssistantMessage) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "created_at": message.created_at,
    }
    if message.tool_calls:
        view["tool_calls"] = message.tool_calls
    if message.tool_call_id is not None:
        view["tool_call_id"] = message.tool_call_id
    return view


def conversation_view(conversation: AssistantConversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "object": "conversation",
        "instance_id": conversation.instance_id,
        "created_at": conversation.created_at,
        "updated_at": conversation.updated_at,
    }


def usage_view(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def reply_view(reply: AssistantMessage) -> dict[str, Any]:
    """The answer of a chat: ``{conversation_id, message, usage, dropped_turns}``."""
    return {
        "conversation_id": reply.conversation_id,
        "message": message_view(reply),
        "usage": usage_view(reply.prompt_tokens, reply.completion_tokens),
        "dropped_turns": reply.dropped_turns,
    }


def get_conversation(
    session: Session, instance: AssistantInstance, conversation_id: str
) -> AssistantConversation:
    found = repository.get_conversation(session, instance.id, conversation_id)
    if found is None:
        raise NotFound("Conversation not found.")
    return found


def open_turn(
    session: Session,
    instance: AssistantInstance,
    content: str,
    conversation_id: str | None,
    tool_call_id: str | None = None,
) -> AssistantConversation:
    """Store the user's message (in a new conversation when none is named), or with
    ``tool_call_id`` the result of one of the last reply's tool calls (a ``tool`` message)."""
    if conversation_id is None:
        if tool_call_id is not None:
            raise _invalid("conversation_id", "a tool result needs its conversation_id")
        conversation = AssistantConversation(instance_id=instance.id, org_id=instance.org_id)
        session.add(conversation)
        session.flush()
    else:
        conversation = get_conversation(session, instance, conversation_id)
        conversation.updated_at = utcnow()
    if tool_call_id is not None and tool_call_id not in _open_calls(session, conversation.id):
        raise _invalid("tool_call_id", "no tool call of this conversation has this id")
    session.add(
        AssistantMessage(
            conversation_id=conversation.id,
            instance_id=instance.id,
            role="user" if tool_call_id is None else "tool",
            content=storable(content),
            tool_call_id=tool_call_id,
        )
    )
    session.flush()
    return conversation


def _open_calls(session: Session, conversation_id: str) -> set[str]:
    """The ids of the tool calls the conversation's assistant messages made."""
    return {
        str(call.get("id"))
        for message in repository.history(session, conversation_id)
        for call in message.tool_calls or ()
    }


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"{field}: {message}.",
        details=[{"loc": ["body", field], "msg": message, "type": "value_error"}],
    )


@dataclass(frozen=True)
class Turn:
    job: Job
    conversation_id: str
    reply_id: str


def start_turn(
    session: Session,
    instance: AssistantInstance,
    content: str,
    conversation_id: str | None,
    *,
    source: Source,
    relay: bool,
    tool_call_id: str | None = None,
) -> Turn:
    """Store the user's message (or a tool's result) and create the job that answers it (sent
    after commit)."""
    conversation = open_turn(session, instance, content, conversation_id, tool_call_id)
    reply_id = new_message_id()
    payload = ReplyJobInput(
        instance_id=instance.id,
        conversation_id=conversation.id,
        reply_id=reply_id,
        source=source,
        relay=relay,
        model=instance.model,
    )
    job = create_job(session, KIND, instance.org_id, payload.model_dump())
    return Turn(job, conversation.id, reply_id)


def delete_conversation(session: Session, conversation: AssistantConversation) -> None:
    session.delete(conversation)
    session.flush()


def model_messages(
    instance: AssistantInstance, history: Sequence[AssistantMessage]
) -> list[dict[str, Any]]:
    """The chat messages sent to the model: the system prompt, then the conversation (with the
    assistant's tool calls and the tools' results, OpenAI-shaped)."""
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": instance.system_prompt}] if instance.system_prompt else []
    )
    for m in history:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            message["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        messages.append(message)
    return messages


def fit_context(
    messages: list[dict[str, Any]], count_tokens: Callable[[list[dict[str, Any]]], int], budget: int
) -> tuple[list[dict[str, Any]], int]:
    """Drop the oldest turns until the prompt fits ``budget`` tokens; the system prompt and the
    last message are always kept. Returns the messages and how many turns were dropped."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    dropped = 0
    while len(turns) > 1 and count_tokens(system + turns) > budget:
        turns = turns[1:]
        dropped += 1
    return system + turns, dropped


def store_reply(
    session: Session,
    instance: AssistantInstance,
    *,
    conversation_id: str,
    reply_id: str,
    content: str,
    prompt_tokens: int,
    completion_tokens: int,
    dropped_turns: int,
    job_id: str | None,
    source: str,
    tool_calls: list[dict[str, Any]] | None = None,
) -> AssistantMessage:
    """Write the assistant's reply and count its tokens, once: a retried job finds its reply
    already written and counts nothing again."""
    existing = repository.get_message(session, reply_id)
    if existing is not None:
        return existing
    reply = AssistantMessage(
        id=reply_id,
        conversation_id=conversation_id,
        instance_id=instance.id,
        role="assistant",
        content=storable(content),
        job_id=job_id,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        dropped_turns=dropped_turns,
        tool_calls=tool_calls or None,
    )
    session.add(reply)
    session.flush()
    repository.add_usage(
        session, instance.id, instance.org_id, period_key(), prompt_tokens, completion_tokens
    )
    data: dict[str, Any] = {
        "conversation_id": conversation_id,
        "message_id": reply_id,
        "source": source,
        "job_id": job_id,
        "usage": usage_view(prompt_tokens, completion_tokens),
        "dropped_turns": dropped_turns,
    }
    if tool_calls:
        data["tool_calls"] = [call["function"]["name"] for call in tool_calls]
    if instance.log_content:
        data["reply"] = content
    log(session, instance, "chat", f"{source} reply of {completion_tokens} tokens", data)
    return reply


# --- incoming webhooks ----------------------------------------------------------------------------


def render_event(instance: AssistantInstance, event: IncomingEvent) -> str:
    """The message an incoming event becomes (``{event}`` and ``{payload}`` replaced)."""
    payload = json.dumps(event.payload, separators=(",", ":"), sort_keys=True, default=str)
    return instance.message_template.replace("{event}", event.event).replace("{payload}", payload)


def verify_incoming(
    instance: AssistantInstance, headers: Mapping[str, str], body: bytes, token: str | None
) -> None:
    """Standard Webhooks signature (or ``?token=`` equal to the secret); else 401."""
    import hmac

    secret = secretbox.decrypt(instance.webhook_secret_encrypted)
    if token is not None:
        if not hmac.compare_digest(token.encode(), secret.encode()):
            raise Unauthorized("Invalid incoming-webhook token.")
        return
    try:
        verify(secret, headers, body)
    except WebhookVerificationFailed as exc:
        raise Unauthorized(f"Incoming webhook not verified: {exc}.") from exc


@dataclass(frozen=True)
class Delivery:
    job_id: str
    replay: bool


def receive_event(
    session: Session,
    instance: AssistantInstance,
    event: IncomingEvent,
    webhook_id: str | None,
) -> Delivery:
    """A verified event becomes a message answered by a job; a replayed ``webhook-id`` answers
    the first delivery's job without a second run."""
    delivery: AssistantWebhookDelivery | None = None
    if webhook_id:
        found = repository.get_delivery(session, instance.id, webhook_id)
        if found is not None:
            return Delivery(found.job_id, replay=True)
        delivery = AssistantWebhookDelivery(
            instance_id=instance.id, webhook_id=webhook_id, job_id=""
        )
        try:
            with session.begin_nested():  # a concurrent delivery of the same id waits here
                session.add(delivery)
        except IntegrityError:
            winner = repository.get_delivery(session, instance.id, webhook_id)
            return Delivery(winner.job_id if winner is not None else "", replay=True)
    turn = start_turn(
        session, instance, render_event(instance, event), None, source="webhook", relay=False
    )
    if delivery is not None:
        delivery.job_id = turn.job.id
        session.flush()
    data: dict[str, Any] = {"event": event.event, "webhook_id": webhook_id, "job_id": turn.job.id}
    if instance.log_content:
        data["payload"] = event.payload
    log(session, instance, "webhook", f"incoming webhook {event.event!r} accepted", data)
    return Delivery(turn.job.id, replay=False)


# --- logs and usage ----------------------------------------------------------------------------


def log(
    session: Session,
    instance: AssistantInstance,
    kind: str,
    message: str,
    data: Mapping[str, Any] | None = None,
) -> None:
    session.add(
        AssistantLog(
            instance_id=instance.id,
            kind=kind,
            message=storable(message),
            data=storable(dict(data or {})),
        )
    )
    session.flush()


def log_view(line: AssistantLog) -> dict[str, Any]:
    return {
        "id": line.id,
        "kind": line.kind,
        "message": line.message,
        "data": line.data,
        "created_at": line.created_at,
    }


def usage_by_instance(session: Session, org_id: str) -> list[dict[str, Any]]:
    """This period's tokens per instance (``GET /v1/usage``'s ``assistants``)."""
    return [
        {
            "instance_id": row.instance_id,
            "name": name,
            **usage_view(row.prompt_tokens, row.completion_tokens),
        }
        for row, name in repository.usage_of_org(session, org_id, period_key())
    ]


# --- deployments -------------------------------------------------------------------------------


def check_available(session: Session, instance: AssistantInstance) -> None:
    """A deployment-backed instance whose deployment cannot serve now: 503 with Retry-After."""
    if instance.backend != "deployment":
        return
    from deployments import repository as deployments
    from deployments import service as deployment_service

    dep = deployments.get_by_name(session, instance.org_id, instance.model)
    if dep is None:
        raise AssistantModelNotFound(instance.model, [])
    if not deployment_service.serving(dep):
        raise deployment_service.unavailable(dep)


@dataclass(frozen=True)
class Replicas:
    """Where a deployment-backed instance's model answers, and its model directory."""

    endpoints: list[str]
    model_path: str


def deployment_endpoints(org_id: str, model: str) -> Replicas:
    """The replicas of the organisation's deployment ``model`` (503 when it cannot serve)."""
    from deployments import repository as deployments
    from deployments import service as deployment_service
    from store.db import session_scope

    with session_scope() as session:
        dep = deployments.get_by_name(session, org_id, model)
        if dep is None:
            raise AssistantModelNotFound(model, [])
        endpoints = deployment_service.serving(dep)
        if not endpoints:
            raise deployment_service.unavailable(dep)
        return Replicas(list(endpoints), dep.model_path)
