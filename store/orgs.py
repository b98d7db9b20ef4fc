"""Organisations and API keys: keys are random, shown once, stored as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, select
from sqlalchemy.orm import Session

from common.timeutil import utcnow
from config import get_settings
from store.models import ApiKey, Job, Organization

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


def create_key(session: Session, org_id: str, name: str = "") -> NewKey:
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        org_id=org_id,
        name=name,
        prefix=raw[: len(KEY_PREFIX) + 4],
        last4=raw[-4:],
        key_hash=hash_key(raw),
    )
    session.add(key)
    session.flush()
    return NewKey(key=key, raw=raw)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key and its organisation."""

    key_id: str
    org_id: str
    plan: str


#: Key → principal, built once (every authenticated request runs it).
_AUTHENTICATE = (
    select(ApiKey.id, ApiKey.org_id, Organization.plan)
    .join(Organization, Organization.id == ApiKey.org_id)
    .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
)


def authenticate(executor: Session | Connection, raw_key: str) -> Principal | None:
    """The live key's principal (a revoked or unknown key: None), in one indexed query."""
    row = executor.execute(_AUTHENTICATE, {"key_hash": hash_key(raw_key)}).first()
    if row is None:
        return None
    return Principal(key_id=row.id, org_id=row.org_id, plan=row.plan)


def job_for_key(session: Session, raw_key: str, job_id: str) -> tuple[bool, Job | None]:
    """(key valid?, the job if it belongs to the key's organisation) in one round trip: the
    polling hot path authenticates and reads the job with a single indexed query."""
    row = session.execute(
        select(ApiKey.id, Job)
        .outerjoin(Job, and_(Job.org_id == ApiKey.org_id, Job.id == job_id))
        .where(ApiKey.key_hash == hash_key(raw_key), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return False, None
    return True, row[1]


def revoke_key(session: Session, org_id: str, key_id: str) -> bool:
    key = session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.org_id == org_id))
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return True
