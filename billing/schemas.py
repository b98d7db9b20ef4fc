"""Pydantic I/O of the billing domain: usage reports, credits and invoices (money: micro-units)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GroupBy = Literal["meter", "subject", "day"]
InvoiceStatus = Literal["draft", "open", "paid", "void"]


class UsageLine(BaseModel):
    meter: str
    dimension: str
    unit: str
    quantity: int
    events: int
    unit_price_micros: int
    per: int
    cost_micros: int
    day: str | None = None
    subject_type: str | None = None
    subject_id: str | None = None


class MeterSummary(BaseModel):
    meter: str
    unit: str
    quantity: int
    cost_micros: int


class BillingUsage(BaseModel):
    """``GET /v1/billing/usage``."""

    org_id: str
    period: str
    period_start: datetime
    period_end: datetime
    plan: str
    tier: str
    currency: str
    group_by: GroupBy
    meters: list[MeterSummary]
    lines: list[UsageLine]
    subtotal_micros: int
    allowance_micros: int
    allowance_left_micros: int
    credits_balance_micros: int
    credits_left_micros: int


class CreditGrant(BaseModel):
    """``POST /v1/billing/credits`` (the operator's key)."""

    org_id: str = Field(min_length=1, max_length=64)
    amount_micros: int = Field(
        ge=-(10**15), le=10**15, description="Positive grants, negative corrections (not 0)."
    )
    reason: str = Field(default="", max_length=500)


class CreditBalance(BaseModel):
    org_id: str
    balance_micros: int
    entry_id: str


class InvoiceLine(BaseModel):
    meter: str
    dimension: str
    unit: str
    quantity: int
    unit_price_micros: int
    per: int
    amount_micros: int
    adjustment: bool = Field(description="Usage of an earlier, already invoiced month.")


class InvoiceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    org_id: str
    period: str
    plan: str
    status: InvoiceStatus
    currency: str
    lines: list[InvoiceLine]
    subtotal_micros: int
    allowance_micros: int
    credits_applied_micros: int
    total_micros: int
    period_start: datetime
    period_end: datetime
    created_at: datetime
    finalized_at: datetime | None
    paid_at: datetime | None
    voided_at: datetime | None


class InvoiceList(BaseModel):
    data: list[InvoiceOut]
    next_cursor: str | None
