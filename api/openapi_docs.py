"""OpenAPI additions for the HTTP contract: rate-limit headers, every error code per route, the
auth scheme, idempotency keys and the outgoing webhook payloads.

FastAPI generates the routes' own shapes; :func:`document_contract` post-processes that spec once,
so every route documents what the middlewares (``api/contract.py``) add to it without each
router repeating it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api import access
from api.contract import EXEMPT_PATHS, IDEMPOTENCY_EXEMPT_PREFIXES, MULTIPART_PATHS
from common.errors import ErrorCode
from webhooks.schemas import EVENT_TYPES, EventPayload

_ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}

RATE_LIMIT_HEADERS: dict[str, dict[str, Any]] = {
    "X-RateLimit-Limit": {
        "description": "Requests allowed per minute for this key and method class "
        "(POST/PUT/PATCH/DELETE share the write budget, the rest the read budget).",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left in the current window.",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Reset": {
        "description": "Unix time (seconds) when the current window resets.",
        "schema": {"type": "integer"},
    },
}
REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "The request's id (`req_…`), equal to `error.request_id`.",
        "schema": {"type": "string"},
    }
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until this key may send this kind of request again.",
        "schema": {"type": "integer"},
    }
}

#: status → (codes, description) for the errors every route may answer.
COMMON_ERRORS: dict[str, tuple[str, str]] = {
    "400": (
        "invalid_json, validation_error",
        "The body is not valid JSON (`invalid_json`), or a header is malformed.",
    ),
    "401": ("unauthorized", "Missing, invalid or revoked API key."),
    "404": ("not_found", "No such route, or no such object in your organisation."),
    "422": (
        "validation_error, unsafe_url",
        "Invalid body or query; `details` lists "
        "`{loc, msg, type}`. Unknown query parameters are rejected.",
    ),
    "429": ("rate_limited", "Over this key's per-minute budget; see `Retry-After`."),
    "500": ("internal_error", "Our fault; quote the request_id."),
    "503": ("unavailable", "The store or the queue broker is down."),
}
BODY_ERRORS: dict[str, tuple[str, str]] = {
    "413": ("payload_too_large", "The body is over 64 KiB (checked before it is parsed)."),
    "415": ("unsupported_media_type", "The body is not `application/json`."),
}
IDEMPOTENCY_ERRORS: dict[str, tuple[str, str]] = {
    "409": (
        "conflict",
        "The Idempotency-Key was used with another body, or its first request is still running.",
    ),
}
JOB_CREATE_ERRORS: dict[str, tuple[str, str]] = {
    "402": (
        "quota_exceeded",
        "Over the plan's monthly pages, GPU seconds or concurrent jobs; "
        "the message says what was used of what.",
    ),
}

IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Any unique string (≤ 255 chars). The same key and body within 24 h returns "
    "the original response (header `Idempotent-Replayed: true`) without doing the work twice; "
    "the same key with a different body is 409 `conflict`.",
    "schema": {"type": "string", "maxLength": 255},
}

WEBHOOK_DESCRIPTION = (
    "Signed the Standard Webhooks way. Headers: `webhook-id` (the message id, the same on every "
    "retry), `webhook-timestamp` (Unix seconds), `webhook-signature` (`v1,<base64 HMAC-SHA256 of "
    '"{webhook-id}.{webhook-timestamp}.{raw body}" keyed with the base64-decoded secret after '
    "`whsec_`>`). Answer 2xx within 10 s; anything else is retried 5 times with exponential "
    "backoff (10 s, 40 s, 160 s, 640 s, 2560 s: about an hour), then the delivery is `failed` "
    "and can be redelivered from `/v1/webhooks/{id}/deliveries`."
)


def _add_errors(operation: dict[str, Any], errors: dict[str, tuple[str, str]]) -> None:
    responses = operation.setdefault("responses", {})
    for status, (codes, description) in errors.items():
        entry = responses.setdefault(
            status, {"content": {"application/json": {"schema": _ENVELOPE}}}
        )
        entry["description"] = f"`{codes}`: {description}"


_DEFAULT_CODE = {
    "400": "validation_error",
    "401": "unauthorized",
    "402": "quota_exceeded",
    "403": "forbidden",
    "404": "not_found",
    "405": "method_not_allowed",
    "409": "conflict",
    "410": "gone",
    "413": "payload_too_large",
    "415": "unsupported_media_type",
    "422": "validation_error",
    "429": "rate_limited",
    "503": "unavailable",
}
_CODES = frozenset(code.value for code in ErrorCode)


def _normalise_errors(operation: dict[str, Any]) -> None:
    """Route-specific errors (e.g. ``409: not_ready``) in the same "`code`: text" form, with the
    envelope as their body."""
    for status, response in operation.get("responses", {}).items():
        if not status.startswith(("4", "5")):
            continue
        response.setdefault("content", {"application/json": {"schema": _ENVELOPE}})
        text = str(response.get("description", "")).strip()
        if text.startswith("`"):
            continue
        head, _, rest = text.partition(" ")
        codes = [c.strip(",()") for c in head.split(",")]
        if codes and all(c in _CODES for c in codes):
            response["description"] = f"`{', '.join(codes)}`: {rest or 'see the message.'}"
        else:
            code = _DEFAULT_CODE.get(status, "internal_error")
            response["description"] = f"`{code}`: {text or 'see the message.'}"


def _add_headers(operation: dict[str, Any], limited: bool) -> None:
    for status, response in operation.get("responses", {}).items():
        headers = response.setdefault("headers", {})
        headers.update(REQUEST_ID_HEADER)
        if limited:
            headers.update(RATE_LIMIT_HEADERS)
        if status == "429":
            headers.update(RETRY_AFTER)


def document_contract(app: FastAPI) -> None:
    """Replace ``app.openapi`` by a generator that adds the contract to every operation."""
    for event in EVENT_TYPES:

        def receiver(body: EventPayload) -> None:  # documentation only: the client's endpoint
            """Documented, never called."""

        app.webhooks.add_api_route(
            event,
            receiver,
            methods=["POST"],
            summary=f"`{event}` event",
            description=WEBHOOK_DESCRIPTION,
            status_code=204,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            webhooks=app.webhooks.routes,
        )
        for path, operations in spec.get("paths", {}).items():
            limited = path not in EXEMPT_PATHS
            for method, operation in operations.items():
                errors = dict(COMMON_ERRORS)
                if not limited:  # health and docs: no key, no budget
                    for status in ("401", "429"):
                        errors.pop(status)
                        operation.get("responses", {}).pop(status, None)
                if operation.get("x-required-scope"):  # every keyed route (issue 24)
                    errors["403"] = access.FORBIDDEN_DOC
                if "requestBody" in operation:
                    errors.update(BODY_ERRORS)
                    if path in MULTIPART_PATHS:
                        errors["415"] = (
                            "unsupported_media_type",
                            "The body is not JSON or multipart/form-data.",
                        )
                if method == "post" and not path.startswith(IDEMPOTENCY_EXEMPT_PREFIXES):
                    errors.update(IDEMPOTENCY_ERRORS)
                    operation.setdefault("parameters", []).append(IDEMPOTENCY_PARAMETER)
                creates_job = "202" in operation.get("responses", {}) or path.startswith(
                    IDEMPOTENCY_EXEMPT_PREFIXES  # inference calls run as (quota-checked) jobs
                )
                if method == "post" and creates_job:
                    errors.update(JOB_CREATE_ERRORS)
                _add_errors(operation, errors)
                _normalise_errors(operation)
                _add_headers(operation, limited=True)  # exempt paths report the budget too
                access.document_operation(operation)  # x-required-scope → security
        schemes = spec.setdefault("components", {}).setdefault("securitySchemes", {})
        for scheme in schemes.values():
            scheme["description"] = (
                "An API key: `Authorization: Bearer cvy_live_…`. Keys are shown once, stored as "
                "SHA-256 hashes, scoped to one organisation, revocable (`DELETE /v1/keys/{id}`)."
            )
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
