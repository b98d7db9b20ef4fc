"""Every route declares its scope, and the declaration is what is enforced: a walk generated
from the OpenAPI document (and the app's hidden routes) with, per route, a key holding every
scope but the ones granting the required one (403 naming it) and a key holding only it (the
scope check passes: any answer but 401/403)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.access.conftest import key
from tests.conftest import OrgKey

PARAM = re.compile(r"\{([^}]+)\}")
DUMMY = "00000000-0000-4000-8000-000000000000"
#: Framework routes of the docs UI (FastAPI's own, not in the OpenAPI document).
FRAMEWORK = {"/docs", "/docs/oauth2-redirect", "/redoc"}


def _operations(client: Any) -> list[tuple[str, str, dict[str, Any]]]:
    spec = client.get("/openapi.json").json()
    return [
        (path, method.upper(), op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _granting(scope: str) -> set[str]:
    """The scopes that grant ``scope`` (write implies read)."""
    if scope.endswith(":read"):
        return {scope, scope[: -len("read")] + "write"}
    return {scope}


def _call(client: Any, method: str, path: str, org: OrgKey, headers: dict[str, str]) -> Any:
    # the walk's organisation fills {org_id}, but it does not delete itself (that route gets
    # an absent id: its scope check passes, then 404)
    own = not (method == "DELETE" and path.endswith("/{org_id}"))
    url = PARAM.sub(lambda m: org.org_id if m.group(1) == "org_id" and own else DUMMY, path)
    body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, url, json=body, headers=headers)


def test_every_route_declares_a_scope_or_public(client: Any, app: Any) -> None:
    from api.access import api_routes, route_access

    undeclared = [
        f"{method} {path}"
        for path, method, op in _operations(client)
        if "x-required-scope" not in op and not op.get("x-public")
    ]
    assert not undeclared, f"routes without a declared scope: {undeclared}"
    hidden = [
        f"{sorted(r.methods or ())} {r.path}"
        for r in api_routes(app)
        if route_access(r) is None and r.path not in FRAMEWORK
    ]
    assert not hidden, f"routes (hidden from the document too) without a scope: {hidden}"


def test_openapi_names_the_scope_as_a_security_requirement(client: Any) -> None:
    for path, method, op in _operations(client):
        scope = op.get("x-required-scope")
        if scope:
            assert op["security"] == [{"HTTPBearer": [scope]}], (method, path)
        else:
            assert op["security"] == [], (method, path)


def test_an_undeclared_route_is_caught_and_refused(migrated: Any) -> None:
    """A router someone forgot to declare: the check above lists it, and no key may call it."""
    from fastapi.testclient import TestClient

    from api.access import api_routes, route_access
    from api.app import create_app
    from tests.access import forgotten
    from tests.conftest import make_org

    app = create_app()
    app.include_router(forgotten.router)
    assert any(r.path == "/v1/forgotten" and route_access(r) is None for r in api_routes(app))
    org = make_org()
    with TestClient(app) as c:
        answer = c.get("/v1/forgotten", headers=org.headers)
    assert answer.status_code == 403
    assert answer.json()["error"]["details"] == {"required_scope": None}


@pytest.fixture(scope="module")
def walk_org(migrated: Any) -> OrgKey:
    from tests.conftest import make_org

    return make_org()


def test_walk_every_route_refuses_without_its_scope_and_passes_with_it(
    client: Any, walk_org: OrgKey
) -> None:
    from access.scopes import ALL_SCOPES

    checked = 0
    failures: list[str] = []
    keys: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    for path, method, op in _operations(client):
        scope = op.get("x-required-scope")
        if not scope:
            continue
        if scope not in keys:
            keys[scope] = (
                key(walk_org, sorted(set(ALL_SCOPES) - _granting(scope))),
                key(walk_org, [scope]),
            )
        without, only = keys[scope]
        denied = _call(client, method, path, walk_org, without)
        error = denied.json().get("error", {}) if denied.status_code == 403 else {}
        if denied.status_code != 403 or error.get("details") != {"required_scope": scope}:
            failures.append(
                f"{method} {path} without {scope}: {denied.status_code} {denied.text[:200]}"
            )
        allowed = _call(client, method, path, walk_org, only)
        if allowed.status_code in (401, 403):
            failures.append(
                f"{method} {path} with only {scope}: {allowed.status_code} {allowed.text[:200]}"
            )
        checked += 1
    assert checked >= 60, checked
    assert not failures, "\n".join(failures)


def test_every_socket_route_authorizes_its_connection(app: Any) -> None:
    """A WebSocket route authenticates itself; the walk above cannot call it, so each must hand
    its connection to ``api.access.authorize_connection`` (the key's checks, its scope, and the
    audit of a denial): a new socket route that does not is listed here."""
    import inspect

    from fastapi.routing import APIWebSocketRoute

    sockets: list[APIWebSocketRoute] = []

    def walk(routes: list[Any]) -> None:
        for route in routes:
            if isinstance(route, APIWebSocketRoute):
                sockets.append(route)
            elif hasattr(route, "original_router"):
                walk(list(route.original_router.routes))

    walk(list(app.routes))
    assert sockets, "no WebSocket route found: the walk is broken"
    unchecked = [
        r.path
        for r in sockets
        if "access.authorize_connection(" not in inspect.getsource(r.endpoint)
    ]
    assert not unchecked, f"WebSocket routes that skip access.authorize_connection: {unchecked}"
