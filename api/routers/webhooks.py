"""``/v1/webhooks``: organisation webhooks, their delivery log and manual redelivery."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api import access
from api.deps import CurrentPrincipal, Db
from api.schemas import ERROR_RESPONSES
from common.errors import NotFound
from webhooks import events, service
from webhooks.schemas import DeliveryList, DeliveryOut, WebhookCreate, WebhookList, WebhookOut

router = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("webhooks")],
)


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


def _id(value: str) -> str:
    if len(value) > 64:
        raise NotFound("Webhook not found.")
    return value


@router.post(
    "", status_code=201, response_model=WebhookOut, summary="Register a webhook (secret shown once)"
)
def create_webhook(body: WebhookCreate, principal: CurrentPrincipal, db: Db) -> JSONResponse:
    endpoint, secret = service.create_endpoint(db, principal.org_id, body)
    db.flush()
    view = service.endpoint_view(endpoint, secret)
    return JSONResponse(view.model_dump(mode="json"), status_code=201)


@router.get("", response_model=WebhookList, summary="List webhooks")
def list_webhooks(
    principal: CurrentPrincipal, db: Db, query: Annotated[PageQuery, Query()]
) -> WebhookList:
    rows, cursor = service.list_endpoints(db, principal.org_id, query.limit, query.cursor)
    return WebhookList(data=[service.endpoint_view(r) for r in rows], next_cursor=cursor)


@router.get("/{webhook_id}", response_model=WebhookOut, summary="Get a webhook")
def get_webhook(webhook_id: str, principal: CurrentPrincipal, db: Db) -> WebhookOut:
    return service.endpoint_view(service.get_endpoint(db, principal.org_id, _id(webhook_id)))


@router.delete("/{webhook_id}", status_code=204, summary="Delete a webhook")
def delete_webhook(webhook_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    service.delete_endpoint(db, principal.org_id, _id(webhook_id))
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries", response_model=DeliveryList, summary="A webhook's delivery log"
)
def list_deliveries(
    webhook_id: str, principal: CurrentPrincipal, db: Db, query: Annotated[PageQuery, Query()]
) -> DeliveryList:
    rows, cursor = service.list_deliveries(
        db, principal.org_id, _id(webhook_id), query.limit, query.cursor
    )
    return DeliveryList(data=[service.delivery_view(r) for r in rows], next_cursor=cursor)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryOut,
    summary="Send a delivery's message again (same webhook-id)",
)
def redeliver(
    webhook_id: str, delivery_id: str, principal: CurrentPrincipal, db: Db
) -> JSONResponse:
    again = service.redeliver(db, principal.org_id, _id(webhook_id), _id(delivery_id))
    events.deliver(db, again.id)  # sent once the request commits
    db.flush()
    return JSONResponse(service.delivery_view(again).model_dump(mode="json"), status_code=202)
