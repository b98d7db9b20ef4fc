"""Organisations and API keys: keys are random, shown once, stored as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from common.timeutil import utcnow
from config import get_settings
from store.models import ApiKey, Job, Member, Membership, Organization

KEY_PREFIX = "cvy_live_"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def get_or_create_org(session: Session, name: str, plan: str | None = None) -> Organization:
    """The organisation called ``name``; a new one gets ``plan`` or the configured default
    (``Settings.resolved_default_plan``: ``unlimited`` on a self-hosted embedded box)."""
    org = session.scalar(select(Organization).where(Organization.name == name))
    if org is None:
        org = Organization(name=name, plan=plan or get_settings().resolved_default_plan())
        session.add(org)
        session.flush()
    return org


def find_org(session: Session, name_or_id: str) -> Organization | None:
    return session.scalar(
        select(Organization).where(
            (Organization.id == name_or_id) | (Organization.name == name_or_id)
        )
    )


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    raw: str  # the only time the plaintext exists


def service_member(session: Session, org_id: str) -> Member:
    """The organisation's service-account member (an owner), made on first use: the keys that
    admin commands and ``conveyor up`` create act for it."""
    name = f"service-account@{org_id}"
    member = session.scalar(select(Member).where(Member.name == name))
    if member is None:
        member = Member(kind="service", name=name, default_org_id=org_id)
        session.add(member)
        session.flush()
        session.add(Membership(org_id=org_id, member_id=member.id, role="owner"))
        session.flush()
    return member


def create_key(
    session: Session,
    org_id: str,
    name: str = "",
    *,
    member_id: str | None = None,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
    allowed_cidrs: list[str] | None = None,
    created_by: str | None = None,
) -> NewKey:
    """A new key of ``member_id`` (default: the organisation's service account) whose default
    organisation is ``org_id``; ``scopes`` None: every scope (``["*"]``)."""
    if member_id is None:
        member_id = service_member(session, org_id).id
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        org_id=org_id,
        name=name,
        prefix=raw[: len(KEY_PREFIX) + 4],
        last4=raw[-4:],
        key_hash=hash_key(raw),
        member_id=member_id,
        scopes=list(scopes) if scopes is not None else ["*"],
        expires_at=expires_at,
        allowed_cidrs=allowed_cidrs,
        created_by=created_by,
    )
    session.add(key)
    session.flush()
    return NewKey(key=key, raw=raw)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key, its member, and the organisation the request acts in.

    ``org_id`` is empty when the key's member does not belong to the organisation the request
    selected (``X-Organization-ID``) or it does not exist: ``api.access`` answers 403."""

    key_id: str
    org_id: str
    plan: str
    member_id: str = ""
    role: str = "owner"
    key_scopes: tuple[str, ...] = ("*",)
    expires_at: datetime | None = None
    allowed_cidrs: tuple[str, ...] | None = None
    default_org_id: str = ""


#: Key → principal in the organisation selected (``:org_id``; None: the key's default), built
#: once (every authenticated request runs it): one indexed query, memberships joined.
_SELECTED_ORG: ColumnElement[str] = func.coalesce(
    bindparam("org_id", required=False), ApiKey.org_id
)
_AUTHENTICATE = (
    select(
        ApiKey.id,
        ApiKey.org_id.label("default_org_id"),
        ApiKey.member_id,
        ApiKey.scopes,
        ApiKey.expires_at,
        ApiKey.allowed_cidrs,
        Membership.org_id,
        Membership.role,
        Organization.plan,
    )
    .outerjoin(
        Membership,
        and_(Membership.member_id == ApiKey.member_id, Membership.org_id == _SELECTED_ORG),
    )
    .outerjoin(Organization, Organization.id == Membership.org_id)
    .where(
        ApiKey.key_hash == bindparam("key_hash"),
        or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > bindparam("now")),
    )
)


def _principal(row: object) -> Principal:
    return Principal(
        key_id=row.id,  # type: ignore[attr-defined]
        org_id=row.org_id or "",  # type: ignore[attr-defined]
        plan=getattr(row, "plan", None) or "",
        member_id=row.member_id or "",  # type: ignore[attr-defined]
        role=row.role or "",  # type: ignore[attr-defined]
        key_scopes=tuple(row.scopes or ()),  # type: ignore[attr-defined]
        expires_at=row.expires_at,  # type: ignore[attr-defined]
        allowed_cidrs=tuple(row.allowed_cidrs) if row.allowed_cidrs else None,  # type: ignore[attr-defined]
        default_org_id=row.default_org_id,  # type: ignore[attr-defined]
    )


def authenticate(
    executor: Session | Connection, raw_key: str, org_id: str | None = None
) -> Principal | None:
    """The live key's principal in ``org_id`` (None: its default organisation); a revoked or
    unknown key: None. One indexed query. Expiry, address and scopes are ``api.access``'s."""
    params = {"key_hash": hash_key(raw_key), "org_id": org_id, "now": utcnow()}
    row = executor.execute(_AUTHENTICATE, params).first()
    return None if row is None else _principal(row)


#: The polling hot path's statement: the key, its membership of the selected organisation and
#: the job (the plan is not needed there: no organisations join).
_JOB_FOR_KEY = (
    select(
        ApiKey.id,
        ApiKey.org_id.label("default_org_id"),
        ApiKey.member_id,
        ApiKey.scopes,
        ApiKey.expires_at,
        ApiKey.allowed_cidrs,
        Membership.org_id,
        Membership.role,
        Job,
    )
    .outerjoin(
        Membership,
        and_(Membership.member_id == ApiKey.member_id, Membership.org_id == _SELECTED_ORG),
    )
    .outerjoin(Job, and_(Job.org_id == Membership.org_id, Job.id == bindparam("job_id")))
    .where(
        ApiKey.key_hash == bindparam("key_hash"),
        or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > bindparam("now")),
    )
)


def job_for_key(
    session: Session, raw_key: str, job_id: str, org_id: str | None = None
) -> tuple[Principal | None, Job | None]:
    """(the key's principal, the job if it belongs to the selected organisation) in one round
    trip: the polling hot path authenticates and reads the job with a single indexed query."""
    params = {"key_hash": hash_key(raw_key), "org_id": org_id, "now": utcnow(), "job_id": job_id}
    row = session.execute(_JOB_FOR_KEY, params).first()
    if row is None:
        return None, None
    return _principal(row), row[-1]


def revoke_key(session: Session, org_id: str, key_id: str) -> bool:
    key = session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.org_id == org_id))
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return True
