"""Keys, organisations and members: the rules (who may mint, rotate, revoke, add, remove) and
their webhook events. Routers call these inside the request's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session

from access.errors import RoleTooLow, StrongerKey
from access.scopes import ALL, ROLES, effective, expand, is_scope, minimal
from common.errors import Conflict, NotFound, ValidationFailed
from common.timeutil import isoformat_z, utcnow
from store import orgs, pagination
from store.models import ApiKey, Member, Membership, Organization
from store.orgs import NewKey, Principal
from webhooks import events

MANAGES_OTHERS = ("owner", "admin")


def _validate_scopes(scopes: list[str]) -> list[str]:
    unknown = [s for s in scopes if s != ALL and not is_scope(s)]
    if unknown:
        raise ValidationFailed(
            f"Unknown scope(s): {', '.join(unknown)}.",
            details=[{"loc": ["body", "scopes"], "msg": "unknown scope", "type": "enum"}],
        )
    return sorted(set(scopes))


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "last4": key.last4,
        "masked": f"{key.prefix}…{key.last4}",
        "scopes": minimal(key.scopes or ()),
        "expires_at": isoformat_z(key.expires_at),
        "allowed_cidrs": key.allowed_cidrs,
        "last_used_at": isoformat_z(key.last_used_at),
        "member": key.member_id,
        "created_by": key.created_by,
        "created_at": isoformat_z(key.created_at),
        "revoked_at": isoformat_z(key.revoked_at),
    }


@dataclass(frozen=True)
class KeySpec:
    name: str = ""
    scopes: list[str] | None = None
    expires_at: datetime | None = None
    allowed_cidrs: list[str] | None = None
    member: str | None = None


def _member_in_org(session: Session, org_id: str, member_ref: str) -> Membership | None:
    member = session.scalar(
        select(Member).where((Member.id == member_ref) | (Member.name == member_ref))
    )
    if member is None:
        return None
    return session.get(Membership, (org_id, member.id))


def create_key(session: Session, caller: Principal, spec: KeySpec) -> NewKey:
    """A key of the caller's member (or, for owners and admins, of another member of the
    organisation) never stronger than the calling key: its scopes within the caller's, its
    expiry no later, and only addresses the caller is restricted to."""
    granted = effective(caller.key_scopes, caller.role)
    if spec.scopes is None:
        scopes = list(caller.key_scopes)
    else:
        scopes = _validate_scopes(spec.scopes)
        exceeds = sorted(expand(scopes) - granted)
        if exceeds:
            raise StrongerKey(
                "A key cannot create a key with more power than its own: "
                f"this key lacks {', '.join(exceeds)}.",
                details={"exceeds": exceeds},
            )
    if spec.scopes is None and caller.role not in MANAGES_OTHERS and ALL in scopes:
        scopes = sorted(granted)  # a capped member's "every scope" is what its role allows
    expires_at = spec.expires_at
    if expires_at is not None and expires_at <= utcnow():
        raise ValidationFailed(
            "expires_at is in the past.",
            details=[{"loc": ["body", "expires_at"], "msg": "in the past", "type": "value_error"}],
        )
    if caller.expires_at is not None and (expires_at is None or expires_at > caller.expires_at):
        expires_at = caller.expires_at
    cidrs = spec.allowed_cidrs
    if caller.allowed_cidrs is not None and cidrs is None:
        cidrs = list(caller.allowed_cidrs)
    member_id = caller.member_id
    if spec.member is not None:
        membership = _member_in_org(session, caller.org_id, spec.member)
        if membership is None:
            raise NotFound("No such member in this organisation.")
        if membership.member_id != caller.member_id and caller.role not in MANAGES_OTHERS:
            raise RoleTooLow("Only owners and admins create keys for other members.")
        member_id = membership.member_id
    new = orgs.create_key(
        session,
        caller.org_id,
        name=spec.name,
        member_id=member_id,
        scopes=scopes,
        expires_at=expires_at,
        allowed_cidrs=cidrs,
        created_by=caller.member_id,
    )
    events.emit(session, "key.created", caller.org_id, _event(new.key))
    return new


def _event(key: ApiKey) -> dict[str, Any]:
    view = key_view(key)
    return {k: view[k] for k in ("id", "name", "masked", "scopes", "member", "expires_at")}


def _visible_keys(caller: Principal) -> Select[ApiKey]:
    stmt = select(ApiKey).where(ApiKey.org_id == caller.org_id)
    if caller.role not in MANAGES_OTHERS:  # developers and viewers: their own keys only
        stmt = stmt.where(ApiKey.member_id == caller.member_id)
    return stmt


def list_keys(
    session: Session, caller: Principal, *, limit: int, cursor: str | None
) -> tuple[list[ApiKey], str | None]:
    now = utcnow()
    stmt = _visible_keys(caller).where((ApiKey.revoked_at.is_(None)) | (ApiKey.revoked_at > now))
    return pagination.list_page(session, stmt, ApiKey, limit=limit, cursor=cursor)


def _load_key(session: Session, caller: Principal, key_id: str) -> ApiKey:
    key = (
        session.scalar(_visible_keys(caller).where(ApiKey.id == key_id))
        if len(key_id) <= 64
        else None
    )
    if key is None:
        raise NotFound("API key not found.")
    return key


def revoke_key(session: Session, caller: Principal, key_id: str) -> ApiKey:
    key = _load_key(session, caller, key_id)
    now = utcnow()
    if key.revoked_at is None or key.revoked_at > now:
        key.revoked_at = now
        events.emit(session, "key.revoked", caller.org_id, _event(key))
    return key


def rotate_key(session: Session, caller: Principal, key_id: str, grace_seconds: int) -> NewKey:
    """A new secret for the key (a new key with the same name, member, scopes, expiry and
    addresses); the old secret keeps working ``grace_seconds`` (0: stops at once)."""
    old = _load_key(session, caller, key_id)
    now = utcnow()
    if old.revoked_at is not None and old.revoked_at <= now:
        raise Conflict("A revoked key cannot be rotated.")
    new = orgs.create_key(
        session,
        old.org_id,
        name=old.name,
        member_id=old.member_id,
        scopes=list(old.scopes or ()),
        expires_at=old.expires_at,
        allowed_cidrs=old.allowed_cidrs,
        created_by=caller.member_id,
    )
    until = now + timedelta(seconds=grace_seconds)
    old.revoked_at = until if old.revoked_at is None else min(old.revoked_at, until)
    events.emit(session, "key.created", caller.org_id, _event(new.key))
    events.emit(session, "key.revoked", caller.org_id, _event(old))
    return new


# --- organisations and members ---------------------------------------------------------------


def org_view(org: Organization, role: str) -> dict[str, Any]:
    return {
        "id": org.id,
        "name": org.name,
        "plan": org.plan,
        "role": role,
        "created_at": isoformat_z(org.created_at),
    }


def list_orgs(session: Session, caller: Principal) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Organization, Membership.role)
        .join(Membership, Membership.org_id == Organization.id)
        .where(Membership.member_id == caller.member_id)
        .order_by(Organization.created_at, Organization.id)
    ).all()
    return [org_view(org, role) for org, role in rows]


def create_org(session: Session, caller: Principal, name: str) -> Organization:
    """A new organisation whose owner is the caller's member."""
    if session.scalar(select(Organization.id).where(Organization.name == name)):
        raise Conflict("An organisation with that name exists.")
    org = orgs.get_or_create_org(session, name)
    session.add(Membership(org_id=org.id, member_id=caller.member_id, role="owner"))
    session.flush()
    return org


def _check_org(caller: Principal, org_id: str) -> None:
    """Members are managed in the organisation the request acts in (``X-Organization-ID``
    selects it); any other id, a stranger's or one that does not exist, is the same 404, as
    for every other object of another organisation."""
    if org_id != caller.org_id:
        raise NotFound("Organisation not found.")


def member_view(member: Member, membership: Membership) -> dict[str, Any]:
    return {
        "member": member.id,
        "name": member.name,
        "kind": member.kind,
        "role": membership.role,
        "added_at": isoformat_z(membership.created_at),
    }


def list_members(session: Session, caller: Principal, org_id: str) -> list[dict[str, Any]]:
    """The organisation's members (an organisation has few: one list, oldest first)."""
    _check_org(caller, org_id)
    rows = session.execute(
        select(Member, Membership)
        .join(Membership, Membership.member_id == Member.id)
        .where(Membership.org_id == org_id)
        .order_by(Membership.created_at, Member.id)
        .limit(1000)
    ).all()
    return [member_view(member, membership) for member, membership in rows]


def add_member(
    session: Session, caller: Principal, org_id: str, member_ref: str, role: str, kind: str
) -> tuple[Member, Membership]:
    """Add a member (an existing one by id or name; a new name makes a new member) with a
    role, or change its role. Only an owner grants or changes ``owner``."""
    _check_org(caller, org_id)
    if role not in ROLES:
        raise ValidationFailed(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
    member = session.scalar(
        select(Member).where((Member.id == member_ref) | (Member.name == member_ref))
    )
    if member is None:
        member = Member(name=member_ref, kind=kind, default_org_id=org_id)
        session.add(member)
        session.flush()
    membership = session.get(Membership, (org_id, member.id))
    if (role == "owner" or (membership is not None and membership.role == "owner")) and (
        caller.role != "owner"
    ):
        raise RoleTooLow("Only an owner grants or changes the owner role.")
    if membership is None:
        membership = Membership(org_id=org_id, member_id=member.id, role=role)
        session.add(membership)
    else:
        if membership.role == "owner" and role != "owner":
            _keep_an_owner(session, org_id, member.id)
        membership.role = role
    session.flush()
    events.emit(
        session, "member.added", org_id, {"member": member.id, "name": member.name, "role": role}
    )
    return member, membership


def _keep_an_owner(session: Session, org_id: str, leaving: str) -> None:
    owners = session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(
            Membership.org_id == org_id,
            Membership.role == "owner",
            Membership.member_id != leaving,
        )
    )
    if not owners:
        raise Conflict("An organisation keeps at least one owner.")


def remove_member(session: Session, caller: Principal, org_id: str, member_id: str) -> None:
    _check_org(caller, org_id)
    membership = session.get(Membership, (org_id, member_id)) if len(member_id) <= 64 else None
    if membership is None:
        raise NotFound("No such member in this organisation.")
    if membership.role == "owner":
        if caller.role != "owner":
            raise RoleTooLow("Only an owner removes an owner.")
        _keep_an_owner(session, org_id, member_id)
    session.delete(membership)
    session.flush()
    events.emit(session, "member.removed", org_id, {"member": member_id})


# --- deleting an organisation ----------------------------------------------------------------


@dataclass(frozen=True)
class OrgDeletion:
    """What deleting an organisation did (the answer of ``DELETE /v1/organizations/{id}``)."""

    org_id: str
    keys_revoked: int
    members_removed: int
    jobs_cancelled: int
    teardown_jobs: list[str]

    def view(self) -> dict[str, Any]:
        return {
            "id": self.org_id,
            "deleted": True,
            "keys_revoked": self.keys_revoked,
            "members_removed": self.members_removed,
            "jobs_cancelled": self.jobs_cancelled,
            "teardown_jobs": self.teardown_jobs,
        }


def delete_org(session: Session, caller: Principal, org_id: str) -> OrgDeletion:
    """Delete the organisation the request acts in (its owner only), in the request's one
    transaction: every key made in it is revoked at once, every membership ends (so no key can
    select it any more: 403, like one that never existed; ``key.revoked`` and
    ``member.removed`` go to its webhook endpoints), active jobs are cancelled, and its
    deployments, resources and projects get their own deletion jobs (sent on commit), which tear
    down what runs. Its assistant instances and RAG endpoints are deleted. The row stays as a
    tombstone: its name stays taken (access policies name organisations), and its jobs, usage,
    invoices and audit log stay until their own retention removes them; its RAG datasets and
    webhook endpoints stay too, out of every key's reach."""
    _check_org(caller, org_id)
    if caller.role != "owner":
        raise RoleTooLow("Only an owner deletes the organisation.")
    session.get(Organization, org_id, with_for_update=True)  # concurrent deletes: one at a time
    now = utcnow()
    keys = session.scalars(
        select(ApiKey).where(
            ApiKey.org_id == org_id, (ApiKey.revoked_at.is_(None)) | (ApiKey.revoked_at > now)
        )
    ).all()
    for key in keys:
        key.revoked_at = now
        events.emit(session, "key.revoked", org_id, _event(key))
    members = session.scalars(select(Membership.member_id).where(Membership.org_id == org_id)).all()
    session.execute(delete(Membership).where(Membership.org_id == org_id))
    for member_id in members:
        events.emit(session, "member.removed", org_id, {"member": member_id})
    cancelled = _cancel_active_jobs(session, org_id)
    teardown = _tear_down(session, org_id)
    session.flush()
    return OrgDeletion(org_id, len(keys), len(members), cancelled, teardown)


def _cancel_active_jobs(session: Session, org_id: str) -> int:
    from jobs.service import emit_job_event
    from store import jobs as job_store
    from store.models import Job

    active = session.scalars(
        select(Job.id).where(Job.org_id == org_id, Job.status.in_(list(job_store.ACTIVE)))
    ).all()
    cancelled = 0
    for job_id in active:
        if job_store.transition(
            session, job_id, to=job_store.JobStatus.CANCELLED, from_=list(job_store.ACTIVE)
        ):
            emit_job_event(session, "job.cancelled", job_id)
            cancelled += 1
    return cancelled


def _tear_down(session: Session, org_id: str) -> list[str]:
    """Each running thing's own deletion (the same calls as its DELETE route); the ids of the
    jobs that carry them out."""
    from assistants import service as assistants
    from assistants.models import AssistantInstance
    from deployments import service as deployments
    from deployments.models import Deployment
    from projects import service as projects
    from projects.models import Project
    from rag.models import Endpoint as RagEndpoint
    from resources import service as resources
    from resources.models import Resource

    jobs: list[str] = []
    for dep in session.scalars(
        select(Deployment).where(Deployment.org_id == org_id, Deployment.desired != "deleted")
    ):
        if deployments.delete(session, dep):
            jobs.append(deployments.schedule(session, dep, "delete"))
    for res in session.scalars(
        select(Resource).where(
            Resource.org_id == org_id, Resource.status.not_in(("deleting", "deleted"))
        )
    ):
        resources.delete(session, res, purge_backups=False)
        jobs.append(res.job_id or "")
    for project in session.scalars(
        select(Project).where(
            Project.org_id == org_id, Project.status.not_in(("deleting", "deleted"))
        )
    ):
        projects.delete_project(session, project)
        jobs.append(project.job_id or "")
    for instance in session.scalars(
        select(AssistantInstance).where(
            AssistantInstance.org_id == org_id, AssistantInstance.deleted_at.is_(None)
        )
    ):
        assistants.delete(session, instance)
    for endpoint in session.scalars(select(RagEndpoint).where(RagEndpoint.org_id == org_id)):
        session.delete(endpoint)  # a public one would otherwise keep answering (and spending)
    return [job for job in jobs if job]
