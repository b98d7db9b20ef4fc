"""Request dependencies: the database session and the authenticated principal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from api import access
from common.errors import Unauthorized
from store import orgs
from store.db import session_scope
from store.orgs import Principal
from workers import outbox

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer cvy_live_…`")


def get_db() -> Iterator[Session]:
    """The request's one session and transaction: it commits once, when the endpoint returned
    and before the response is sent (``scope="function"``), so a failed commit (store down: 503)
    or a refused send of the jobs it created (broker down: 503, the jobs failed) is the answer,
    never a 2xx for work that was not accepted. Routers never commit."""
    with session_scope() as session:  # the outbox's 503 is raised by its commit
        session.info[outbox.ON_SEND_FAILURE] = "reject"
        yield session


Db = Annotated[Session, Depends(get_db, scope="function")]


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def require_credentials(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized(
            "Missing API key: send `Authorization: Bearer <key>`.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.credentials


def authenticate(
    db: Session | Connection,
    credentials: HTTPAuthorizationCredentials | None,
    request: HTTPConnection | None = None,
) -> Principal:
    """The caller's principal in the organisation it selected, or 401/403 (uncached: a revoked
    key fails on its next request). One indexed query (key, membership, organisation)."""
    token = require_credentials(credentials)
    org_id = access.selected_org(request) if request is not None else None
    principal = orgs.authenticate(db, token, org_id)
    if principal is None:
        raise Unauthorized("Invalid or revoked API key.", headers={"WWW-Authenticate": "Bearer"})
    return principal


def get_principal(request: Request, db: Db, credentials: Credentials) -> Iterator[Principal]:
    """Authenticate, check the route's declared scope (``api.access``), and after the endpoint
    returned write a mutating call's audit record in the request's transaction."""
    principal = access.authorize(authenticate(db, credentials, request), request)
    request.state.principal = principal
    yield principal
    access.audit_change(request, principal, db)


CurrentPrincipal = Annotated[Principal, Depends(get_principal, scope="function")]
