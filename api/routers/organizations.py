"""``/v1/organizations``: the caller's organisations, new ones, and their members and roles."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from access import service
from api import access
from api.deps import CurrentPrincipal, Db
from api.schemas import ERROR_RESPONSES

router = APIRouter(
    prefix="/v1/organizations",
    tags=["organizations"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("organizations")],
)

Role = Literal["owner", "admin", "developer", "viewer"]


class OrgCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")


class OrgOut(BaseModel):
    id: str
    name: str
    plan: str
    role: Role = Field(description="The calling key's member's role in it.")
    created_at: str


class OrgList(BaseModel):
    data: list[OrgOut]


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    member: str = Field(
        min_length=1,
        max_length=200,
        description="A member's id or name (a new name adds a new member, e.g. an e-mail).",
    )
    role: Role = "developer"
    kind: Literal["person", "service"] = Field(default="person", description="For a new member.")


class MemberOut(BaseModel):
    member: str
    name: str
    kind: str
    role: Role
    added_at: str


class MemberList(BaseModel):
    data: list[MemberOut]


class OrgDeleted(BaseModel):
    id: str
    deleted: bool
    keys_revoked: int = Field(description="Keys made in it, revoked at once.")
    members_removed: int = Field(description="Memberships ended (its owner's included).")
    jobs_cancelled: int = Field(description="Queued or running jobs cancelled.")
    teardown_jobs: list[str] = Field(
        description="The deletion jobs of its deployments, resources and projects; they run "
        "on their own (no key of the organisation is left to poll them: the operator sees "
        "them in Flower)."
    )


@router.get("", response_model=OrgList, summary="The organisations the caller's member is in")
def list_orgs(principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return {"data": service.list_orgs(db, principal)}


@router.post("", status_code=201, response_model=OrgOut, summary="Create an organisation")
def create_org(
    body: OrgCreate, request: Request, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    org = service.create_org(db, principal, body.name)
    access.audit_target(request, "organization", org.id)
    return JSONResponse(service.org_view(org, "owner"), status_code=201)


@router.get("/{org_id}/members", response_model=MemberList, summary="Members and their roles")
def list_members(org_id: str, principal: CurrentPrincipal, db: Db) -> dict[str, Any]:
    return {"data": service.list_members(db, principal, org_id)}


@router.post(
    "/{org_id}/members",
    status_code=201,
    response_model=MemberOut,
    summary="Add a member with a role (or change its role)",
)
def add_member(
    org_id: str, body: MemberAdd, request: Request, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    member, membership = service.add_member(
        db, principal, org_id, body.member, body.role, body.kind
    )
    access.audit_target(request, "member", member.id, "organizations.members.add")
    return JSONResponse(service.member_view(member, membership), status_code=201)


@router.delete("/{org_id}/members/{member_id}", status_code=204, summary="Remove a member from it")
def remove_member(
    org_id: str, member_id: str, request: Request, principal: CurrentPrincipal, db: Db
) -> Response:
    service.remove_member(db, principal, org_id, member_id)
    access.audit_target(request, "member", member_id, "organizations.members.remove")
    return Response(status_code=204)


@router.delete(
    "/{org_id}",
    response_model=OrgDeleted,
    summary="Delete the organisation (owner only): keys revoked, members removed, teardown",
    description="Only an owner, acting in it (`X-Organization-ID` or the key's default "
    "organisation), deletes an organisation. At once, in one transaction: every key made in it "
    "is revoked, every membership ends (so no key selects it any more: the same 403 as an "
    "organisation that never existed), queued and running jobs are cancelled, and its "
    "deployments, resources and projects get their deletion jobs; assistant instances and "
    "RAG endpoints are deleted. Its jobs, usage, invoices and audit log are kept until their "
    "own retention, and its name stays taken. Another organisation's id, or one that does not "
    "exist: 404.",
)
def delete_org(
    org_id: str, request: Request, principal: CurrentPrincipal, db: Db
) -> dict[str, Any]:
    deletion = service.delete_org(db, principal, org_id)
    access.audit_target(request, "organization", org_id)
    return deletion.view()
