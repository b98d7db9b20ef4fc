"""Writing and reading the audit log. A change's record is added to the change's own session
(one transaction); a denied call's record gets its own small transaction. Records hold ids,
names of actions and request metadata, never a secret."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from access.models import AuditRecord, KeyAddress
from common.timeutil import isoformat_z, utcnow
from store import pagination
from store.models import new_id


@dataclass(frozen=True)
class RequestInfo:
    """What the audit log keeps of a request (no header values but the user agent)."""

    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None


def record(
    session: Session,
    *,
    org_id: str | None,
    action: str,
    status: int,
    info: RequestInfo,
    member_id: str | None = None,
    key_id: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
) -> AuditRecord:
    row = AuditRecord(
        id=new_id(),
        created_at=utcnow(),
        org_id=org_id or None,
        actor_member=member_id or None,
        actor_key_id=key_id or None,
        action=action[:100],
        target_type=target_type[:50] if target_type else None,
        target_id=target_id[:200] if target_id else None,
        request_id=info.request_id,
        ip=(info.ip or "")[:64] or None,
        user_agent=(info.user_agent or "")[:300] or None,
        status=status,
    )
    session.add(row)
    return row


def note_address(
    session: Session, *, key_id: str, org_id: str, member_id: str, info: RequestInfo
) -> bool:
    """Remember that ``key_id`` was used from ``info.ip``; a first use from it is audited
    (``key.new_address``). True when the address was new."""
    if not info.ip:
        return False
    seen = session.get(KeyAddress, (key_id, info.ip[:64]))
    if seen is not None:
        return False
    session.add(KeyAddress(key_id=key_id, ip=info.ip[:64]))
    record(
        session,
        org_id=org_id,
        action="keys.new_address",
        status=200,
        info=info,
        member_id=member_id,
        key_id=key_id,
        target_type="key",
        target_id=key_id,
    )
    return True


def view(row: AuditRecord) -> dict[str, Any]:
    return {
        "id": row.id,
        "org_id": row.org_id,
        "actor": {"member": row.actor_member, "key_id": row.actor_key_id},
        "action": row.action,
        "target": {"type": row.target_type, "id": row.target_id},
        "request_id": row.request_id,
        "ip": row.ip,
        "user_agent": row.user_agent,
        "status": row.status,
        "created_at": isoformat_z(row.created_at),
    }


@dataclass(frozen=True)
class AuditFilter:
    action: str | None = None
    actor: str | None = None  # a member id or a key id
    target_id: str | None = None
    created_after: datetime | None = None


def list_records(
    session: Session, org_id: str, flt: AuditFilter, *, limit: int, cursor: str | None
) -> tuple[list[AuditRecord], str | None]:
    stmt = select(AuditRecord).where(AuditRecord.org_id == org_id)
    if flt.action:
        stmt = stmt.where(AuditRecord.action == flt.action)
    if flt.actor:
        stmt = stmt.where(
            (AuditRecord.actor_member == flt.actor) | (AuditRecord.actor_key_id == flt.actor)
        )
    if flt.target_id:
        stmt = stmt.where(AuditRecord.target_id == flt.target_id)
    if flt.created_after:
        stmt = stmt.where(AuditRecord.created_at > flt.created_after)
    return pagination.list_page(session, stmt, AuditRecord, limit=limit, cursor=cursor)


def purge(session: Session, retention_days: int, batch: int = 5000) -> int:
    """Delete up to ``batch`` records older than ``retention_days``; the count deleted."""
    cutoff = utcnow() - timedelta(days=retention_days)
    ids = session.scalars(
        select(AuditRecord.id).where(AuditRecord.created_at < cutoff).limit(batch)
    ).all()
    if ids:
        session.execute(delete(AuditRecord).where(AuditRecord.id.in_(ids)))
    return len(ids)
