"""The error envelope and request ids.

Every response carries ``X-Request-ID`` (``req_…``); every error, including unknown routes,
validation errors and unhandled exceptions, is ``{"error": {"code", "message", "details",
"request_id"}}``. Domain errors are ``common.errors.ConveyorError`` subclasses.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import ConveyorError, ErrorCode
from store.db import is_unreachable

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"

_STATUS_CODES: dict[int, str] = {
    400: ErrorCode.VALIDATION_ERROR,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    410: ErrorCode.GONE,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.VALIDATION_ERROR,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
}


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestIdMiddleware:
    """Give every request an id (``request.state.request_id``) and echo it in a header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != header[0]]
                message["headers"] = [*headers, header]
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_id_of(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = new_request_id()
        request.state.request_id = rid
    return str(rid)


# OpenAI-compatible routes: their errors also carry OpenAI's ``type`` and ``param``.
OPENAI_PATHS = (
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/batches",
    "/v1/files",
)


# Firecrawl-compatible routes: their errors also carry Firecrawl's ``success: false``.
FIRECRAWL_PATHS = ("/v1/scrape", "/v1/map", "/v1/crawl/", "/v2/")


def _openai_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error"
    )


def _param_of(details: Any) -> str | None:
    """The first invalid field of a validation error (``body.messages.0`` → ``messages.0``)."""
    if isinstance(details, list) and details and isinstance(details[0], dict):
        loc = [str(p) for p in details[0].get("loc", []) if p != "body"]
        return ".".join(loc) or None
    return None


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
    *,
    openai_type: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    request_id = request_id_of(request)
    body: dict[str, Any] = {
        "error": {
            "code": str(code),
            "message": message,
            "details": details,
            "request_id": request_id,
        }
    }
    if request.url.path.startswith(OPENAI_PATHS):  # OpenAI clients parse type/param too
        body["error"]["type"] = openai_type or _openai_type(status)
        body["error"]["param"] = param if param is not None else _param_of(details)
    path = request.url.path
    if path.startswith(FIRECRAWL_PATHS) or path == "/v1/crawl":
        body["success"] = False
    return JSONResponse(
        body, status_code=status, headers={**(headers or {}), REQUEST_ID_HEADER: request_id}
    )


async def _conveyor_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConveyorError)
    return error_response(
        request,
        exc.status_code,
        exc.code,
        exc.message,
        exc.details,
        exc.headers,
        openai_type=getattr(exc, "openai_type", None),
        param=getattr(exc, "param", None),
    )


def _clean_loc(loc: Any) -> list[Any]:
    return [part for part in loc if not (isinstance(part, str) and part.startswith("function-"))]


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return error_response(
            request,
            400,
            ErrorCode.INVALID_JSON,
            "The request body is not valid JSON.",
            [{"loc": _clean_loc(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors],
        )
    details = [
        {"loc": _clean_loc(err["loc"]), "msg": str(err["msg"]), "type": str(err["type"])}
        for err in errors
    ]
    return error_response(
        request, 422, ErrorCode.VALIDATION_ERROR, "The request is invalid.", details
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, ErrorCode.INTERNAL_ERROR)
    message = str(exc.detail) if exc.detail else "Error."
    if exc.status_code == 404 and message == "Not Found":
        message = f"No route {request.method} {request.url.path}."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    return error_response(request, exc.status_code, code, message, None, dict(exc.headers or {}))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    if is_unreachable(exc):  # the store is down (the broker's own refusals raise Unavailable)
        log.warning("store unreachable on %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            request,
            503,
            ErrorCode.UNAVAILABLE,
            "The job store is unavailable; try again shortly.",
            None,
            {"Retry-After": "5"},
        )
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        request,
        500,
        ErrorCode.INTERNAL_ERROR,
        "Internal error. Quote the request_id when reporting it.",
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ConveyorError, _conveyor_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
