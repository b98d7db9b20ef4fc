"""Request dependencies: the database session and the authenticated principal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

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


def authenticate(db: Session, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The caller's principal, or 401 (uncached: a revoked key fails on its next request)."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized(
            "Missing API key: send `Authorization: Bearer <key>`.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = orgs.authenticate(db, credentials.credentials)
    if principal is None:
        raise Unauthorized("Invalid or revoked API key.", headers={"WWW-Authenticate": "Bearer"})
    return principal


def get_principal(request: Request, db: Db, credentials: Credentials) -> Principal:
    principal = authenticate(db, credentials)
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
