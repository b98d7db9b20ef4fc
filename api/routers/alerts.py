"""``/v1/alerts``: alert rules (usage, budget, deployment status, job error rate, queue backlog),
their state and their event log. Evaluation runs on the ``maintenance`` queue (beat and events);
the routes only change rules on the request's session."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from alerts import service
from alerts.schemas import (
    AlertCreate,
    AlertEventList,
    AlertList,
    AlertOut,
    AlertPatch,
    PageQuery,
)
from api import access
from api.deps import CurrentPrincipal, Db
from api.schemas import ERROR_RESPONSES

router = APIRouter(
    prefix="/v1/alerts",
    tags=["alerts"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("alerts")],
)


@router.post("", status_code=201, response_model=AlertOut, summary="Create an alert rule")
def create_alert(body: AlertCreate, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    alert = service.create(db, principal.org_id, body)
    db.refresh(alert)
    return JSONResponse(
        service.view(alert).model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"/v1/alerts/{alert.id}"},
    )


@router.get("", response_model=AlertList, summary="List alert rules (cursor pages)")
def list_alerts(
    principal: CurrentPrincipal, db: Db, query: Annotated[PageQuery, Query()]
) -> AlertList:
    rows, cursor = service.list_alerts(db, principal.org_id, query.limit, query.cursor)
    return AlertList(data=[service.view(r) for r in rows], next_cursor=cursor)


@router.get("/{alert_id}", response_model=AlertOut, summary="Get an alert rule and its state")
def get_alert(alert_id: str, principal: CurrentPrincipal, db: Db) -> AlertOut:
    return service.view(service.get(db, principal.org_id, alert_id))


@router.patch("/{alert_id}", response_model=AlertOut, summary="Change an alert rule")
def patch_alert(alert_id: str, body: AlertPatch, principal: CurrentPrincipal, db: Db) -> AlertOut:
    alert = service.update(db, principal.org_id, alert_id, body)
    db.refresh(alert)
    return service.view(alert)


@router.delete("/{alert_id}", status_code=204, summary="Delete an alert rule")
def delete_alert(alert_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    service.delete(db, principal.org_id, alert_id)
    return Response(status_code=204)


@router.get(
    "/{alert_id}/events",
    response_model=AlertEventList,
    summary="An alert's transitions (firing, resolved), newest first",
)
def list_events(
    alert_id: str, principal: CurrentPrincipal, db: Db, query: Annotated[PageQuery, Query()]
) -> AlertEventList:
    rows, cursor = service.list_events(db, principal.org_id, alert_id, query.limit, query.cursor)
    return AlertEventList(data=[service.event_view(r) for r in rows], next_cursor=cursor)
