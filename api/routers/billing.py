"""``/v1/billing``: usage and its cost, credits, invoices (JSON, PDF, CSV), paying and voiding
them.

Resource group ``billing``. ``POST /v1/billing/credits`` takes the platform operator's key
(``CONVEYOR_OPERATOR_KEY``), not an organisation's: an organisation's key gets 403 ``forbidden``.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api import access
from api.deps import Credentials, CurrentPrincipal, Db, authenticate
from api.schemas import ERROR_RESPONSES, ErrorEnvelope
from billing import invoices, service
from billing.errors import OperatorOnly
from billing.prices import UNITS, currency
from billing.schemas import (
    BillingUsage,
    CreditBalance,
    CreditGrant,
    GroupBy,
    InvoiceList,
    InvoiceOut,
    MeterSummary,
    UsageLine,
)
from common.errors import Unauthorized
from config import get_settings
from store import orgs

router = APIRouter(
    prefix="/v1/billing",
    tags=["billing"],
    responses=ERROR_RESPONSES,
    dependencies=[access.requires_group("billing")],
)

#: Most rows ``group_by=subject`` answers (the largest subjects are not ranked: keyset order).
SUBJECT_ROWS = 1000


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    period: str = Field(default="current", description="`current` or `YYYY-MM`.")
    group_by: GroupBy = "meter"


class InvoiceListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = None


@router.get("/usage", response_model=BillingUsage, summary="Usage and its cost in a month")
def get_billing_usage(
    principal: CurrentPrincipal, db: Db, query: Annotated[UsageQuery, Query()]
) -> BillingUsage:
    org_id = principal.org_id
    period = service.resolve_period(query.period)
    plan, tier = service.org_tier(db, org_id)
    lines: list[UsageLine] = []
    if query.group_by == "subject":
        rows = service.subject_lines(db, tier, org_id, period, limit=SUBJECT_ROWS)
    else:
        rows = service.usage_lines(db, tier, org_id, period, by_day=query.group_by == "day")
    lines = [UsageLine(**row) for row in rows]
    meters: dict[str, MeterSummary] = {}
    for line in lines:
        seen = meters.setdefault(
            line.meter, MeterSummary(meter=line.meter, unit=line.unit, quantity=0, cost_micros=0)
        )
        seen.quantity += line.quantity
        seen.cost_micros += line.cost_micros
    start, end = service.period_bounds(period)
    current = period == service.resolve_period("current")
    subtotal = sum(m.cost_micros for m in meters.values())
    exact = current and query.group_by != "subject"  # the lines are the whole month
    position = service.credit_position(
        db, org_id, tier=(plan, tier), spent_micros=subtotal if exact else None
    )
    return BillingUsage(
        org_id=org_id,
        period=period,
        period_start=start,
        period_end=end,
        plan=plan,
        tier=tier.name,
        currency=currency(),
        group_by=query.group_by,
        meters=sorted(meters.values(), key=lambda m: list(UNITS).index(m.meter)),
        lines=lines,
        subtotal_micros=subtotal,
        allowance_micros=tier.allowance_micros,
        allowance_left_micros=position.allowance_left_micros if current else 0,
        credits_balance_micros=position.balance_micros,
        credits_left_micros=position.credits_left_micros,
    )


def _require_operator(db: Db, credentials: Credentials) -> None:
    """The operator's key, or 403 for an organisation's key / 401 for no or an unknown key."""
    operator = get_settings().operator_key.get_secret_value()
    given = credentials.credentials if credentials is not None else ""
    if operator and given and hmac.compare_digest(given.encode(), operator.encode()):
        return
    if not given or orgs.authenticate(db, given) is None:
        authenticate(db, credentials)  # 401 with the usual message
        raise Unauthorized("Invalid API key.")
    raise OperatorOnly(
        "Granting credits needs the platform operator's key (CONVEYOR_OPERATOR_KEY).",
        details={"required": "operator"},
    )


@router.post(
    "/credits",
    status_code=201,
    response_model=CreditBalance,
    summary="Grant credits (operator)",
    dependencies=[access.public_route()],  # the platform operator's key, checked in the route
    responses={403: {"model": ErrorEnvelope, "description": "forbidden (not the operator's key)"}},
)
def grant_credits(body: CreditGrant, db: Db, credentials: Credentials) -> CreditBalance:
    _require_operator(db, credentials)
    entry_id, balance = service.grant_credits(db, body.org_id, body.amount_micros, body.reason)
    return CreditBalance(org_id=body.org_id, balance_micros=balance, entry_id=entry_id)


@router.get("/invoices", response_model=InvoiceList, summary="List invoices (newest first)")
def list_invoices(
    principal: CurrentPrincipal, db: Db, query: Annotated[InvoiceListQuery, Query()]
) -> InvoiceList:
    rows, next_cursor = invoices.list_page(
        db, principal.org_id, limit=query.limit, cursor=query.cursor
    )
    return InvoiceList(data=[InvoiceOut.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/invoices/{invoice_id}.pdf", summary="An invoice as PDF")
def invoice_pdf(invoice_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    invoice = invoices.get(db, principal.org_id, invoice_id)
    org = orgs.find_org(db, principal.org_id)
    return Response(
        invoices.render_pdf(invoice, org.name if org else ""),
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="invoice-{invoice.period}.pdf"'},
    )


@router.get("/invoices/{invoice_id}.csv", summary="An invoice's lines as CSV")
def invoice_csv(invoice_id: str, principal: CurrentPrincipal, db: Db) -> Response:
    invoice = invoices.get(db, principal.org_id, invoice_id)
    return Response(
        invoices.render_csv(invoice),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="invoice-{invoice.period}.csv"'},
    )


@router.get("/invoices/{invoice_id}", response_model=InvoiceOut, summary="An invoice")
def get_invoice(invoice_id: str, principal: CurrentPrincipal, db: Db) -> InvoiceOut:
    return InvoiceOut.model_validate(invoices.get(db, principal.org_id, invoice_id))


@router.post(
    "/invoices/{invoice_id}/pay",
    response_model=InvoiceOut,
    summary="Mark paid",
    responses={409: {"model": ErrorEnvelope, "description": "conflict (the invoice is void)"}},
)
def pay_invoice(invoice_id: str, principal: CurrentPrincipal, db: Db) -> InvoiceOut:
    """Record the invoice's payment (``open → paid``, webhook ``invoice.paid``); idempotent."""
    return InvoiceOut.model_validate(invoices.pay(db, principal.org_id, invoice_id))


@router.post(
    "/invoices/{invoice_id}/void",
    response_model=InvoiceOut,
    summary="Void an invoice",
    responses={409: {"model": ErrorEnvelope, "description": "conflict (the invoice is paid)"}},
)
def void_invoice(invoice_id: str, principal: CurrentPrincipal, db: Db) -> InvoiceOut:
    """Cancel an open invoice (``open → void``, webhook ``invoice.voided``): the credits it
    applied go back to the balance and its usage is not billed again. Idempotent; a paid invoice
    cannot be voided (409), and a void one cannot be paid (409)."""
    return InvoiceOut.model_validate(invoices.void(db, principal.org_id, invoice_id))
