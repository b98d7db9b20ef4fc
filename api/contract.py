"""HTTP contract middlewares: rate limits, body size and media type, idempotency keys, CORS.

``install_contract(app)`` adds them (inside ``RequestIdMiddleware``, so every error they answer
carries the request id and the one error envelope). Order, outermost first:

    CORS (when ``CONVEYOR_CORS_ORIGINS`` is set) → rate limit → body limit → idempotency → app

* Rate limit: every ``/v1`` response carries ``X-RateLimit-Limit/Remaining/Reset``; over budget →
  429 ``rate_limited`` + ``Retry-After``. Budgets per key and method class from the org's plan.
* Body limit: ``Content-Length`` over ``CONVEYOR_MAX_BODY_BYTES`` (64 KiB) → 413 before reading;
  a chunked body is cut off (413) as soon as it passes the limit, so it is never parsed.
  A non-empty body of another media type → 415 ``unsupported_media_type`` (a body without a
  Content-Type header is read as JSON).
* Idempotency: a POST with ``Idempotency-Key`` runs once per organisation and key for 24 h; the
  same key and body replay the first answer (``Idempotent-Replayed: true``); another body → 409.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import anyio
from fastapi import FastAPI, HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from api.ratelimit import RateLimiter, RateLimitPolicy, identity_for
from common.errors import ErrorCode
from config import get_settings

log = logging.getLogger(__name__)

EXEMPT_PATHS = frozenset(
    {"/v1/health", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
)
JSON_TYPES = ("application/json", "application/merge-patch+json")
#: Upload routes that take OpenAI's multipart file uploads (``POST /v1/files``), with their own
#: size limit (``CONVEYOR_MAX_UPLOAD_BYTES``).
MULTIPART_PATHS = frozenset({"/v1/files"})
#: Upload routes with a path parameter (a dataset's files), same limit.
MULTIPART_PATTERNS = (re.compile(r"^/v1/datasets/[^/]+/files$"),)
#: POST routes that create nothing: no idempotency bookkeeping (and streaming answers).
IDEMPOTENCY_EXEMPT_PREFIXES = ("/v1/chat/", "/v1/completions", "/v1/embeddings")
MAX_STORED_RESPONSE = 256 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REPLAY_HEADERS = ("content-type", "location")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def bearer_token(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


async def _send_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    details: object = None,
) -> None:
    response = error_response(Request(scope), status, code, message, details, headers)
    await response(scope, receive, send)


# --- principal lookup (shared by rate limits and idempotency) ---------------------------------


@dataclass(frozen=True)
class KeyInfo:
    org_id: str
    policy: RateLimitPolicy


def selected_org(scope: Scope) -> str | None:
    """The ``X-Organization-ID`` header (None: the key's default organisation)."""
    value = _header(scope, b"x-organization-id")
    return value.strip() or None if value else None


@dataclass(frozen=True)
class KeyOrgs:
    """A key's organisations for the contract middlewares: its default one and the others its
    member belongs to, each with its plan's rate-limit policy."""

    default: KeyInfo
    others: dict[str, KeyInfo]

    def select(self, org_id: str | None) -> KeyInfo:
        """The organisation ``X-Organization-ID`` names, when the member is in it; else the
        default one (the route answers that 403 itself)."""
        return self.others.get(org_id, self.default) if org_id else self.default


class KeyLookup:
    """(token, selected organisation) → (the organisation the request acts in, its plan's
    rate-limit policy), cached briefly per key (one query for all the member's organisations,
    so random ``X-Organization-ID`` values cost no lookups). Authentication itself stays in
    ``api.deps`` (uncached), so a revoked key fails on its very next request. A member acting in
    another organisation draws from that organisation's plan and budget."""

    def __init__(self, ttl_seconds: float = 30.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, KeyOrgs | None]] = {}

    def _load(self, token: str) -> KeyOrgs | None:
        from sqlalchemy import select

        from plans import service as plans
        from store import orgs
        from store.db import session_scope
        from store.models import Membership, Organization

        with session_scope() as session:
            principal = orgs.authenticate(session, token)
            if principal is None or not principal.org_id:  # unknown, or out of its default org
                return None
            rows = session.execute(
                select(Membership.org_id, Organization.plan)
                .join(Organization, Organization.id == Membership.org_id)
                .where(Membership.member_id == principal.member_id)
                .limit(1000)
            ).all()
            policies: dict[str, RateLimitPolicy] = {}

            def info(org_id: str, plan: str) -> KeyInfo:
                if plan not in policies:
                    limits = plans.plan_limits(session, plan)
                    policies[plan] = RateLimitPolicy(
                        limits.read_per_minute, limits.write_per_minute
                    )
                return KeyInfo(org_id, policies[plan])

            return KeyOrgs(
                info(principal.org_id, principal.plan),
                {org_id: info(org_id, plan) for org_id, plan in rows},
            )

    async def get(self, token: str, org_id: str | None = None) -> KeyInfo | None:
        digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1].select(org_id) if hit[1] is not None else None
        try:
            found = await anyio.to_thread.run_sync(self._load, token)
        except Exception:  # store down: the route itself answers 503 unavailable
            log.warning("API key lookup failed; treating the key as unknown", exc_info=True)
            return None
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[digest] = (now, found)
        return found.select(org_id) if found is not None else None

    def forget(self) -> None:
        self._cache.clear()


# --- rate limits ------------------------------------------------------------------------------


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: RateLimiter, lookup: KeyLookup) -> None:
        self.app = app
        self.limiter = limiter
        self.lookup = lookup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exempt = scope["path"] in EXEMPT_PATHS
        token = bearer_token(scope)
        info = await self.lookup.get(token, selected_org(scope)) if token else None
        client = scope.get("client")
        # Unknown keys count against the caller's address, so random keys buy no extra budget;
        # a key's budget is per organisation it acts in (its plan's).
        identity = identity_for(
            token if info else None, client[0] if client else None, info.org_id if info else None
        )
        try:
            policy = info.policy if info else None
            if exempt:  # health checks and docs report the budget without spending it
                decision = await self.limiter.peek(identity, scope["method"], policy)
            else:
                decision = await self.limiter.hit(identity, scope["method"], policy)
        except Exception:  # the counter store is down: fail open, loudly
            log.warning("rate-limit storage unavailable; request not counted", exc_info=True)
            await self.app(scope, receive, send)
            return
        headers = decision.headers()
        if not decision.allowed:
            await _send_error(
                scope,
                receive,
                send,
                429,
                ErrorCode.RATE_LIMITED,
                f"Rate limit of {decision.limit} requests per minute exceeded for "
                f"{scope['method']} requests; retry in {decision.retry_after} s.",
                headers,
            )
            return
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = message.get("headers", [])
                # A route's own, narrower limit (an assistant instance's plan) reports itself.
                if not any(h[0] == b"x-ratelimit-limit" for h in present):
                    names = {k for k, _ in raw}
                    kept = [h for h in present if h[0] not in names]
                    message["headers"] = [*kept, *raw]
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- body size and media type -----------------------------------------------------------------


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # NUL and other control characters can name nothing, and PostgreSQL refuses NUL in
        # text: answer before any route turns them into a query.
        if _CONTROL.search(scope["path"]):
            await _send_error(scope, receive, send, 404, ErrorCode.NOT_FOUND, "Not found.")
            return
        query = unquote_plus(bytes(scope.get("query_string", b"")).decode("latin-1"))
        if _CONTROL.search(query):
            await _send_error(
                scope,
                receive,
                send,
                422,
                ErrorCode.VALIDATION_ERROR,
                "Query parameters may not contain control characters.",
                details=[{"loc": ["query"], "msg": "control character", "type": "value_error"}],
            )
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length_text = _header(scope, b"content-length")
        chunked = "chunked" in (_header(scope, b"transfer-encoding") or "").lower()
        try:
            length = int(length_text) if length_text is not None else None
        except ValueError:
            await _send_error(
                scope, receive, send, 400, ErrorCode.VALIDATION_ERROR, "Bad Content-Length."
            )
            return
        upload = scope["path"] in MULTIPART_PATHS or any(
            p.match(scope["path"]) for p in MULTIPART_PATTERNS
        )
        max_bytes = self.max_upload_bytes if upload else self.max_bytes
        if length is not None and length > max_bytes:
            await _send_error(
                scope,
                receive,
                send,
                413,
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"The request body is {length} bytes; the limit is {max_bytes} bytes.",
            )
            return
        has_body = chunked or (length or 0) > 0
        content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        multipart_ok = upload and content_type == "multipart/form-data"
        # A body sent with no Content-Type header at all is read as JSON (a missing header is
        # not a wrong one); any other media type, form-encoded included, is refused.
        wrong_type = bool(content_type) and content_type not in JSON_TYPES
        if has_body and wrong_type and not multipart_ok:
            await _send_error(
                scope,
                receive,
                send,
                415,
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                f"Send the body as application/json, not {content_type}.",
            )
            return
        if has_body and not content_type:  # the routes parse it as the JSON it is
            scope = {
                **scope,
                "headers": [*scope["headers"], (b"content-type", b"application/json")],
            }
        if has_body and not multipart_ok:
            await self._json_body(scope, receive, send, max_bytes)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    # Raised inside the body read: FastAPI re-raises HTTPException as is, and the
                    # error handlers turn it into the 413 envelope. Nothing past the limit is read.
                    raise HTTPException(
                        413, f"The request body is over the limit of {max_bytes} bytes."
                    )
            return message

        await self.app(scope, counting_receive, send)

    async def _json_body(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        """Read a JSON body (bounded), refuse what no store can hold, then hand it on."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > max_bytes:
                await _send_error(
                    scope,
                    receive,
                    send,
                    413,
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"The request body is over the limit of {max_bytes} bytes.",
                )
                return
            if not message.get("more_body", False):
                break
        problem = _unstorable_text(bytes(body))
        if problem:
            await _send_error(
                scope,
                receive,
                send,
                422,
                ErrorCode.VALIDATION_ERROR,
                f"The body contains {problem}, which no field accepts.",
                details=[{"loc": ["body"], "msg": problem, "type": "string_unstorable"}],
            )
            return
        await self.app(scope, replay_body(bytes(body), then=receive), send)


def _unstorable_text(body: bytes) -> str | None:
    """NUL characters and lone surrogates parse as JSON but break every store (PostgreSQL
    refuses NUL in text; UTF-8 cannot encode a lone surrogate): name them, or None."""
    if b"\\u" not in body and b"\\U" not in body:
        return None  # both can only arrive as JSON escapes: nothing to check
    try:
        stack: list[Any] = [json.loads(body)]
    except (ValueError, RecursionError):
        return None  # malformed or absurdly nested: the route's parser answers 400/422
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "a NUL character (\\u0000)"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "an unpaired UTF-16 surrogate"
    return None


# --- unknown query parameters -----------------------------------------------------------------


class UnknownQueryMiddleware:
    """422 for query parameters an operation does not declare (typos must not be ignored).

    The declared names come from the app's own OpenAPI spec (so ``Annotated[Model, Query()]``
    parameter models count field by field); requests that match no documented operation pass.
    """

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self._operations: list[tuple[re.Pattern[str], str, frozenset[str]]] | None = None

    def _table(self) -> list[tuple[re.Pattern[str], str, frozenset[str]]]:
        """(path regex, method, declared query names), most specific paths first."""
        if self._operations is None:
            spec = self.api.openapi()
            rows = []
            for path, operations in spec.get("paths", {}).items():
                pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")
                for method, operation in operations.items():
                    names = frozenset(
                        p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"
                    )
                    rows.append((path.count("{"), pattern, method.upper(), names))
            rows.sort(key=lambda row: row[0])
            self._operations = [(pattern, method, names) for _, pattern, method, names in rows]
        return self._operations

    def _declared_for(self, scope: Scope) -> frozenset[str] | None:
        path, method = scope["path"], scope["method"]
        for pattern, op_method, names in self._table():
            if op_method == method and pattern.match(path):
                return names
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = bytes(scope.get("query_string", b"")) if scope["type"] == "http" else b""
        if not query:
            await self.app(scope, receive, send)
            return
        declared = self._declared_for(scope)
        names = {name for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)}
        unknown = sorted(names - declared) if declared is not None else []
        if unknown:
            await _send_error(
                scope,
                receive,
                send,
                422,
                ErrorCode.VALIDATION_ERROR,
                f"Unknown query parameter {unknown[0]!r}"
                + (
                    f"; this operation takes {', '.join(sorted(declared or ()))}."
                    if declared
                    else "."
                ),
                details=[
                    {
                        "loc": ["query", name],
                        "msg": "unknown query parameter",
                        "type": "extra_forbidden",
                    }
                    for name in unknown
                ],
            )
            return
        await self.app(scope, receive, send)


# --- idempotency keys -------------------------------------------------------------------------


def _storable(status: int) -> bool:
    """Answers worth replaying; transient ones (auth, quota, limits, 5xx) leave the key free."""
    return status < 500 and status not in (401, 402, 408, 409, 429)


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, lookup: KeyLookup, ttl_seconds: int) -> None:
        self.app = app
        self.lookup = lookup
        self.ttl = ttl_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _header(scope, b"idempotency-key") if scope["type"] == "http" else None
        if (
            key is None
            or scope["method"] != "POST"
            or scope["path"].startswith(IDEMPOTENCY_EXEMPT_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        if not (1 <= len(key) <= 255) or not key.isprintable() or not key.isascii():
            await _send_error(
                scope,
                receive,
                send,
                422,
                ErrorCode.VALIDATION_ERROR,
                "Idempotency-Key must be 1-255 printable ASCII characters.",
                details=[{"loc": ["header", "Idempotency-Key"], "msg": "invalid", "type": "value"}],
            )
            return
        token = bearer_token(scope)
        info = await self.lookup.get(token, selected_org(scope)) if token else None
        if info is None:  # the route answers 401 itself
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        query = bytes(scope.get("query_string", b""))
        fingerprint = hashlib.sha256(
            scope["method"].encode() + b" " + scope["path"].encode() + b"?" + query + b"\n" + body
        ).hexdigest()
        await self._handle(scope, send, info.org_id, key, fingerprint, bytes(body))

    async def _handle(
        self, scope: Scope, send: Send, org_id: str, key: str, fingerprint: str, body: bytes
    ) -> None:
        from idempotency import service

        claim = await anyio.to_thread.run_sync(service.claim, org_id, key, fingerprint, self.ttl)
        replay_receive = replay_body(body)
        if not claim.won:
            if not claim.fingerprint_matches:
                message = "This Idempotency-Key was already used with a different request body."
            elif not claim.completed:
                message = "A request with this Idempotency-Key is still being processed."
            else:
                message = ""
            if message:
                await _send_error(scope, replay_receive, send, 409, ErrorCode.CONFLICT, message)
                return
            headers = [
                (k.encode(), str(v).encode()) for k, v in (claim.response_headers or {}).items()
            ]
            headers.append((b"idempotent-replayed", b"true"))
            stored = (claim.response_body or "").encode()
            headers.append((b"content-length", str(len(stored)).encode()))
            await send(
                {"type": "http.response.start", "status": claim.response_status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": stored})
            return
        status = 500
        kept: dict[str, str] = {}
        captured = bytearray()
        overflow = False

        async def capture(message: Message) -> None:
            nonlocal status, overflow
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", []):
                    if bytes(name).decode("latin-1").lower() in _REPLAY_HEADERS:
                        kept[bytes(name).decode("latin-1").lower()] = bytes(value).decode("latin-1")
            elif message["type"] == "http.response.body" and not overflow:
                captured.extend(message.get("body", b""))
                overflow = len(captured) > MAX_STORED_RESPONSE
            await send(message)

        finished = False
        try:
            await self.app(scope, replay_receive, capture)
            finished = True
        finally:
            text = captured.decode("utf-8", "replace")
            if finished and _storable(status) and not overflow:
                await anyio.to_thread.run_sync(service.complete, org_id, key, status, kept, text)
            else:
                await anyio.to_thread.run_sync(service.release, org_id, key)


def replay_body(body: bytes, then: Receive | None = None) -> Callable[[], Awaitable[Message]]:
    """Give the app the body read ahead; afterwards pass on ``then`` (the server's receive), so
    a streaming response still hears ``http.disconnect`` when its client goes away."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if then is not None:
            return await then()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    return receive


# --- installation -----------------------------------------------------------------------------


def install_contract(app: FastAPI) -> None:
    """Add the contract middlewares (call before ``RequestIdMiddleware`` is added)."""
    settings = get_settings()
    lookup = KeyLookup()
    app.state.key_lookup = lookup
    app.add_middleware(
        IdempotencyMiddleware, lookup=lookup, ttl_seconds=settings.idempotency_ttl_seconds
    )
    app.add_middleware(UnknownQueryMiddleware, api=app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    if settings.ratelimit_enabled:
        limiter = RateLimiter(
            settings.ratelimit_storage_url or settings.resolved_redis_url(),
            strategy=settings.ratelimit_strategy,
        )
        app.state.rate_limiter = limiter
        app.add_middleware(RateLimitMiddleware, limiter=limiter, lookup=lookup)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Organization-ID"],
            expose_headers=[
                "X-Request-ID",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "Retry-After",
            ],
        )
