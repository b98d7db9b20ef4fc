"""Scopes on routes, checked in one place.

A router declares its resource group once::

    router = APIRouter(prefix="/v1/projects", dependencies=[requires_group("projects")])

and every route of it then needs ``projects:read`` (GET/HEAD) or ``projects:write`` (anything
else). A route that needs something else says so on the route (``dependencies=[requires(
"jobs:read")]``, which replaces the group's requirement), a route without a key says
``dependencies=[public_route()]``. ``install_access`` copies every route's requirement into the
OpenAPI document (``x-required-scope`` and the bearer security requirement naming the scope;
``x-public: true`` and no security for public routes); ``tests/access/test_scope_walk.py``
fails for a route that declares neither.

The declarations are no-op markers resolved once at startup (``route.access``); the principal
dependencies (``api.deps.get_principal``, the inference routes' short-lived one, the polling hot
path) call ``authorize`` after authenticating, so the check adds no query. ``get_principal``
also writes a successful mutating call's audit record (POST, PUT, PATCH, DELETE) into the
request's own transaction, after the endpoint returned and before the commit; denied calls
(401/403) get theirs in their own small transaction (``record_denial``).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from access import audit
from access.audit import RequestInfo
from access.scopes import effective, for_method, is_scope
from access.usage import RECORDER
from common.errors import ConveyorError, Forbidden, Unauthorized
from common.timeutil import isoformat_z, utcnow
from store.db import session_scope
from store.orgs import Principal

log = logging.getLogger(__name__)

ORG_HEADER = "X-Organization-ID"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY_SCHEME = "HTTPBearer"


# --- the checks -------------------------------------------------------------------------------


def request_info(request: HTTPConnection) -> RequestInfo:
    return RequestInfo(
        request_id=getattr(request.state, "request_id", None),
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


def selected_org(request: HTTPConnection) -> str | None:
    """The ``X-Organization-ID`` header (None: the key's default organisation)."""
    value = request.headers.get(ORG_HEADER)
    return value.strip() if value and value.strip() else None


NOT_A_MEMBER = "This API key's member does not belong to that organisation."


def check_key(principal: Principal, request: HTTPConnection) -> Principal:
    """Expiry (401), allowed addresses (403) and the selected organisation (403: the same
    answer whether it does not exist or the member is not in it); on success the key's use is
    noted off the request path (``access.usage``)."""
    request.state.audit_actor = principal
    if principal.expires_at is not None and principal.expires_at <= utcnow():
        raise Unauthorized(
            f"API key expired at {isoformat_z(principal.expires_at)}; create a new one.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    info = request_info(request)
    if principal.allowed_cidrs is not None and not _allowed(info.ip, principal.allowed_cidrs):
        raise Forbidden("This API key is not allowed from this address.")
    if not principal.org_id:
        raise Forbidden(NOT_A_MEMBER)
    RECORDER.note(principal.key_id, principal.org_id, principal.member_id, info)
    return principal


def _allowed(ip: str | None, cidrs: tuple[str, ...]) -> bool:
    if ip is None:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for cidr in cidrs:
        try:
            if address in ipaddress.ip_network(cidr, strict=False):
                return True
        except ValueError:
            continue
    return False


def has_scope(principal: Principal, scope: str) -> bool:
    return scope in effective(principal.key_scopes, principal.role or "viewer")


def check_scope(principal: Principal, scope: str) -> None:
    if not has_scope(principal, scope):
        raise Forbidden(
            f"This API key lacks the scope {scope!r} in this organisation.",
            details={"required_scope": scope},
        )


async def authorize_connection(
    principal: Principal | None, conn: HTTPConnection, scope: str
) -> Principal:
    """For a route that authenticates itself (a WebSocket): the key's checks and ``scope``;
    raises ``Unauthorized`` (no or an unknown key: ``principal`` None) or ``Forbidden`` (close
    the socket with 4401/4403). A denial is audited like an HTTP one (``<group>.connect.denied``,
    in its own small transaction, off the event loop)."""
    try:
        if principal is None:
            raise Unauthorized("Invalid or missing API key.")
        check_key(principal, conn)
        check_scope(principal, scope)
    except ConveyorError as exc:
        if exc.status_code in (401, 403):
            action = f"{scope.split(':')[0]}.connect.denied"
            await run_in_threadpool(_record_denial_of, conn, exc.status_code, action)
        raise
    return principal


# --- declarations -----------------------------------------------------------------------------


class Declaration:
    """What a route needs: a group (read/write from the method), one exact scope, or nothing
    (public). The declaring dependency is a no-op; ``authorize`` (run by every principal
    dependency, after authentication) checks it, from ``route.access``."""

    def __init__(
        self, *, group: str | None = None, scope: str | None = None, public: bool = False
    ) -> None:
        if scope is not None and not is_scope(scope):
            raise ValueError(f"unknown scope {scope!r}")
        self.group = group
        self.scope = scope
        self.public = public

    def __repr__(self) -> str:
        return f"Declaration(group={self.group!r}, scope={self.scope!r}, public={self.public})"


def _declare(declaration: Declaration) -> Any:
    async def declared() -> None:
        return None

    declared.access_declaration = declaration  # type: ignore[attr-defined]
    return Depends(declared)


def requires_group(group: str) -> Any:
    """Router-level declaration: ``<group>:read`` for GET/HEAD, ``<group>:write`` otherwise."""
    return _declare(Declaration(group=group))


def requires(scope: str) -> Any:
    """Route-level declaration of one exact scope (it replaces the router's group)."""
    return _declare(Declaration(scope=scope))


def public_route() -> Any:
    """A route any caller may use without a key (health, docs, signed incoming calls)."""
    return _declare(Declaration(public=True))


class RouteAccess:
    """What ``install_access`` resolved for a route (``route.access``)."""

    def __init__(
        self, scope: str | None, group: str, action: str, target_param: str | None
    ) -> None:
        self.scope = scope  # None: public
        self.group = group
        self.action = action
        self.target_param = target_param


def _declaration(route: APIRoute) -> Declaration | None:
    found: Declaration | None = None
    for dep in route.dependencies:  # the router's first, then the route's own (which wins)
        declaration = getattr(getattr(dep, "dependency", None), "access_declaration", None)
        if isinstance(declaration, Declaration):
            found = (
                declaration if found is None or declaration.scope or declaration.public else found
            )
    return found


def _action(route: APIRoute, group: str, method: str) -> tuple[str, str | None]:
    parts = [p for p in route.path.split("/") if p]
    params = [p[1:-1] for p in parts if p.startswith("{")]
    target = params[-1] if params else None
    last = parts[-1] if parts else ""
    if method == "DELETE":
        verb = "delete"
    elif method in ("PUT", "PATCH") or (method == "POST" and last.startswith("{")):
        verb = "update"
    elif method == "POST" and (not params and len(parts) <= 2):
        verb = "create"
    elif method == "POST":
        verb = last.replace("-", "_")
    else:
        verb = "read"
    return f"{group}.{verb}", target


def route_access(route: object) -> RouteAccess | None:
    access: RouteAccess | None = getattr(route, "access", None)
    return access


def api_routes(app: FastAPI) -> list[APIRoute]:
    """Every APIRoute of the app, those of included routers too (FastAPI keeps an included
    router as one entry; its routes carry the router's prefix and dependencies)."""
    out: list[APIRoute] = []

    def walk(routes: list[Any]) -> None:
        for route in routes:
            if isinstance(route, APIRoute):
                out.append(route)
            elif hasattr(route, "original_router"):
                walk(list(route.original_router.routes))

    walk(list(app.routes))
    return out


def install_access(app: FastAPI) -> None:
    """Resolve every route's declaration once: ``route.access`` for the checks and the audit,
    ``x-required-scope`` and the security requirement in the OpenAPI document. A route that
    declares nothing gets no ``route.access``: every key is refused on it (403)."""
    for route in api_routes(app):
        declaration = _declaration(route)
        if declaration is None:
            continue
        methods = route.methods or {"GET"}
        # one route serving several methods: the strongest (a write) decides, fail-safe
        method = min(methods & MUTATING) if methods & MUTATING else sorted(methods)[0]
        if declaration.public:
            route.access = RouteAccess(None, "public", "public", None)  # type: ignore[attr-defined]
            extra: dict[str, Any] = {"x-public": True}
        else:
            scope = declaration.scope or for_method(declaration.group or "", method)
            group = declaration.group or scope.split(":")[0]
            action, target = _action(route, group, method)
            route.access = RouteAccess(scope, group, action, target)  # type: ignore[attr-defined]
            extra = {"x-required-scope": scope}
        route.openapi_extra = {**(route.openapi_extra or {}), **extra}
    app.openapi_schema = None
    _install_denial_audit(app)


FORBIDDEN_DOC = (
    "forbidden",
    "The key lacks this route's scope (`details.required_scope`), is used from outside its "
    "`allowed_cidrs`, or its member is not in the selected organisation (`X-Organization-ID`).",
)
ORG_PARAMETER: dict[str, Any] = {
    "name": ORG_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 64},
    "description": "Act in another organisation the key's member belongs to (default: the "
    "key's own). A non-member organisation and a missing one get the same 403.",
}


def document_operation(operation: dict[str, Any]) -> None:
    """The OpenAPI operation's security requirement from its declaration: the bearer key
    naming the scope it needs, or none for a public route."""
    scope = operation.get("x-required-scope")
    if scope:
        operation["security"] = [{SECURITY_SCHEME: [scope]}]
        operation.setdefault("parameters", []).append(ORG_PARAMETER)
    elif operation.get("x-public"):
        operation["security"] = []


def authorize(principal: Principal, request: HTTPConnection) -> Principal:
    """Every principal dependency runs this after authenticating: the key's expiry, addresses
    and organisation (``check_key``), then the route's declared scope."""
    check_key(principal, request)
    meta = route_access(request.scope.get("route"))
    if meta is None:
        raise Forbidden(
            "This route declares no scope; no key may call it.", details={"required_scope": None}
        )
    if meta.scope is not None:
        check_scope(principal, meta.scope)
    return principal


# --- audit ------------------------------------------------------------------------------------


def audit_target(request: Request, type_: str, id_: str, action: str | None = None) -> None:
    """An endpoint names what it changed (e.g. the id of what it created) for its record."""
    request.state.audit_target = (type_, id_, action)


def audit_change(request: Request, principal: Principal, db: Session | None) -> None:
    """After a mutating call's endpoint returned: its record, in ``db`` (the change's own
    transaction) or, for routes without one, in a small transaction of its own. A call whose
    change already carried its record (``audit_in``) gets no second one."""
    if request.method not in MUTATING or getattr(request.state, AUDITED, False):
        return
    meta = route_access(request.scope.get("route"))
    if meta is None or meta.scope is None:
        return
    if db is None:
        _record_own_transaction(request, principal, meta.action, 200, meta)
        return
    target_type, target_id, action = _target(request, meta)
    audit.record(
        db,
        org_id=principal.org_id,
        action=action or meta.action,
        status=getattr(request.scope.get("route"), "status_code", None) or 200,
        info=request_info(request),
        member_id=principal.member_id,
        key_id=principal.key_id,
        target_type=target_type,
        target_id=target_id,
    )


AUDITED = "audit_recorded"


def audit_in(db: Session, request: Request, principal: Principal) -> None:
    """Write a mutating call's audit record in ``db``, the transaction of its change (a route
    whose principal holds no session, e.g. an inference call creating its job), and mark the
    request so the after-response hook writes nothing more: one commit, not two."""
    audit_change(request, principal, db)
    setattr(request.state, AUDITED, True)


def _target(
    request: HTTPConnection, meta: RouteAccess
) -> tuple[str | None, str | None, str | None]:
    explicit = getattr(request.state, "audit_target", None)
    if explicit is not None:
        return explicit  # type: ignore[no-any-return]
    target_id = request.path_params.get(meta.target_param) if meta.target_param else None
    target_type = (
        meta.target_param[:-3]
        if meta.target_param and meta.target_param.endswith("_id")
        else meta.group
    )
    return target_type, target_id, None


def _record_own_transaction(
    request: HTTPConnection,
    principal: Principal | None,
    action: str,
    status: int,
    meta: RouteAccess | None,
) -> None:
    target_type, target_id, explicit_action = (
        _target(request, meta) if meta is not None else (None, None, None)
    )
    try:
        with session_scope() as session:
            audit.record(
                session,
                org_id=(principal.org_id or principal.default_org_id) if principal else None,
                action=explicit_action or action,
                status=status,
                info=request_info(request),
                member_id=principal.member_id if principal else None,
                key_id=principal.key_id if principal else None,
                target_type=target_type,
                target_id=target_id,
            )
    except Exception:  # the store down: the denial itself still answers
        log.warning("audit record of a denied call failed", exc_info=True)


def record_denial(request: HTTPConnection, status: int) -> None:
    """A 401/403's audit record, in its own small transaction."""
    meta = route_access(request.scope.get("route"))
    action = f"{meta.action}.denied" if meta is not None else "request.denied"
    _record_denial_of(request, status, action, meta)


def _record_denial_of(
    conn: HTTPConnection, status: int, action: str, meta: RouteAccess | None = None
) -> None:
    principal: Principal | None = getattr(conn.state, "audit_actor", None)
    _record_own_transaction(conn, principal, action, status, meta)


def _install_denial_audit(app: FastAPI) -> None:
    handler = app.exception_handlers.get(ConveyorError)
    if handler is None or getattr(handler, "audits_denials", False):
        return

    async def audited(request: Request, exc: Exception) -> Any:
        if isinstance(exc, ConveyorError) and exc.status_code in (401, 403):
            await run_in_threadpool(record_denial, request, exc.status_code)
        return await handler(request, exc)  # type: ignore[misc]

    audited.audits_denials = True  # type: ignore[attr-defined]
    app.add_exception_handler(ConveyorError, audited)
