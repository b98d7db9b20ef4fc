"""Invoices: closing a month into one invoice per organisation, paying, voiding, and rendering
an invoice as CSV and PDF. Functions take the caller's session and never commit.

Closing is idempotent: the invoice row is claimed with ``INSERT … ON CONFLICT (org_id, period)
DO NOTHING`` first, so a rerun (the beat task, ``conveyor billing close-period``, two beats at
once) never makes a second invoice. Usage recorded for a month after its invoice exists is
charged in the open month (``service.record_usage``) and shows there as adjustment lines.

Status: ``draft`` (claimed) → ``open`` (lines and totals final, in the same transaction) →
``paid`` | ``void``. An invoice whose total is covered by the allowance and credits is ``paid``
when it is closed. Voiding (``open → void``) cancels the charge: the credits the invoice applied go
back to the ledger, the month's usage stays recorded but is not billed again (the invoice keeps
its (org, period) slot, so a rerun of the close makes none), and a paid invoice cannot be voided.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

from fpdf import FPDF
from sqlalchemy.orm import Session

from billing import repository
from billing.errors import InvoiceStateError
from billing.models import Invoice
from billing.prices import UNITS, currency
from billing.schemas import InvoiceOut
from billing.service import credits_balance, org_tier, period_bounds
from common.errors import NotFound, ValidationFailed
from common.timeutil import isoformat_z, utcnow
from plans.service import period_key
from store.models import new_id
from webhooks import events


def close_org_period(session: Session, org_id: str, period: str) -> Invoice | None:
    """Make ``org_id``'s invoice for ``period``; None when it already exists."""
    if period >= period_key():
        raise ValidationFailed(f"The month {period} has not ended yet; it cannot be closed.")
    plan, tier = org_tier(session, org_id)
    start, end = period_bounds(period)
    now = utcnow()
    invoice_id = repository.claim_invoice(
        session,
        {
            "id": new_id(),
            "org_id": org_id,
            "period": period,
            "plan": plan,
            "status": "draft",
            "currency": currency(),
            "lines": [],
            "subtotal_micros": 0,
            "allowance_micros": 0,
            "credits_applied_micros": 0,
            "total_micros": 0,
            "period_start": start,
            "period_end": end,
            "created_at": now,
        },
    )
    if invoice_id is None:
        return None
    quantities: dict[tuple[str, str, bool], int] = defaultdict(int)
    first_day, last_day = start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")
    for meter, dimension, day, quantity in repository.rollup_lines(session, org_id, period):
        adjustment = not (first_day <= day < last_day)  # an earlier month's late usage
        quantities[(meter, dimension, adjustment)] += int(quantity)
    lines: list[dict[str, Any]] = []
    for (meter, dimension, adjustment), quantity in sorted(quantities.items()):
        price = tier.price(meter, dimension)
        lines.append(
            {
                "meter": meter,
                "dimension": dimension,
                "unit": UNITS.get(meter, ""),
                "quantity": quantity,
                "unit_price_micros": price.micros,
                "per": price.per,
                "amount_micros": price.cost(quantity),
                "adjustment": adjustment,
            }
        )
    subtotal = sum(line["amount_micros"] for line in lines)
    allowance = min(subtotal, tier.allowance_micros)
    due = subtotal - allowance
    applied = min(max(0, credits_balance(session, org_id)), due)
    if applied:
        repository.add_credit(session, org_id, -applied, f"invoice {period}", invoice_id)
    invoice = repository.get_invoice(session, org_id, invoice_id)
    assert invoice is not None
    invoice.lines = lines
    invoice.subtotal_micros = subtotal
    invoice.allowance_micros = allowance
    invoice.credits_applied_micros = applied
    invoice.total_micros = due - applied
    invoice.status = "open"
    invoice.finalized_at = now
    if invoice.total_micros == 0:
        invoice.status, invoice.paid_at = "paid", now
    session.flush()
    events.emit(session, "invoice.created", org_id, invoice_view(invoice))
    if invoice.status == "paid":
        events.emit(session, "invoice.paid", org_id, invoice_view(invoice))
    return invoice


def orgs_to_close(session: Session, period: str) -> list[str]:
    """Organisations with usage charged in ``period`` (each gets one invoice)."""
    return repository.orgs_with_usage(session, period)


def pay(session: Session, org_id: str, invoice_id: str) -> Invoice:
    """``open → paid`` (recorded payment); paying a paid invoice returns it unchanged."""
    invoice = get(session, org_id, invoice_id, lock=True)
    if invoice.status == "paid":
        return invoice
    if invoice.status != "open":
        raise InvoiceStateError(f"A {invoice.status} invoice cannot be paid.")
    invoice.status, invoice.paid_at = "paid", utcnow()
    session.flush()
    events.emit(session, "invoice.paid", org_id, invoice_view(invoice))
    return invoice


def void(session: Session, org_id: str, invoice_id: str) -> Invoice:
    """``open → void`` (webhook ``invoice.voided``): the credits it applied are returned to the
    ledger. Voiding a void invoice returns it unchanged; a paid (or draft) one is 409. The move is
    a compare-and-set on the status, so two concurrent calls refund once."""
    invoice = get(session, org_id, invoice_id)
    moved = invoice.status == "open" and repository.move_invoice(
        session, invoice.id, "open", {"status": "void", "voided_at": utcnow()}
    )
    session.refresh(invoice)  # as it stands now (another call may have moved it first)
    if not moved:
        if invoice.status == "void":
            return invoice
        raise InvoiceStateError(
            f"A {invoice.status} invoice cannot be voided.", details={"status": invoice.status}
        )
    if invoice.credits_applied_micros:
        repository.add_credit(
            session,
            org_id,
            invoice.credits_applied_micros,
            f"invoice {invoice.period} voided ({invoice.id})",
        )
    events.emit(session, "invoice.voided", org_id, invoice_view(invoice))
    return invoice


def get(session: Session, org_id: str, invoice_id: str, *, lock: bool = False) -> Invoice:
    invoice = repository.get_invoice(session, org_id, invoice_id, lock=lock)
    if invoice is None:
        raise NotFound("Invoice not found.")
    return invoice


def list_page(
    session: Session, org_id: str, *, limit: int, cursor: str | None
) -> tuple[list[Invoice], str | None]:
    return repository.list_invoices(session, org_id, limit=limit, cursor=cursor)


def invoice_view(invoice: Invoice) -> dict[str, Any]:
    return InvoiceOut.model_validate(invoice).model_dump(mode="json")


# --- rendering --------------------------------------------------------------------------------

CSV_FIELDS = (
    "meter", "dimension", "unit", "quantity", "unit_price_micros", "per", "amount_micros",
    "adjustment",
)  # fmt: skip


def render_csv(invoice: Invoice) -> str:
    """One row per line item, then the totals rows (``meter`` = ``subtotal`` … ``total``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for line in invoice.lines:
        writer.writerow([line[name] for name in CSV_FIELDS])
    for name, amount in _totals(invoice):
        writer.writerow([name, "", "", "", "", "", amount, ""])
    return out.getvalue()


def _totals(invoice: Invoice) -> list[tuple[str, int]]:
    return [
        ("subtotal", invoice.subtotal_micros),
        ("allowance", -invoice.allowance_micros),
        ("credits_applied", -invoice.credits_applied_micros),
        ("total", invoice.total_micros),
    ]


def _money(micros: int, code: str) -> str:
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole:,}.{frac:06d} {code}"


def render_pdf(invoice: Invoice, org_name: str) -> bytes:
    """The invoice as a one-table PDF (fpdf2, core fonts)."""
    pdf = FPDF(format="A4")
    pdf.set_title(f"Invoice {invoice.id}")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, f"Invoice {invoice.period}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    for label, value in (
        ("Invoice", invoice.id),
        ("Organisation", f"{org_name} ({invoice.org_id})"),
        ("Plan", invoice.plan),
        ("Status", invoice.status),
        ("Period", f"{isoformat_z(invoice.period_start)} - {isoformat_z(invoice.period_end)}"),
        ("Issued", isoformat_z(invoice.finalized_at) or "-"),
    ):
        pdf.cell(0, 6, f"{label}: {value}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    with pdf.table(col_widths=(40, 40, 30, 40, 40), text_align="LEFT") as table:
        table.row(["Meter", "Dimension", "Quantity", "Unit price", "Amount"])
        for line in invoice.lines:
            label = line["meter"] + (" (adjustment)" if line["adjustment"] else "")
            per = f" / {line['per']}" if line["per"] != 1 else ""
            table.row(
                [
                    label,
                    str(line["dimension"]),
                    f"{line['quantity']} {line['unit']}",
                    _money(line["unit_price_micros"], invoice.currency) + per,
                    _money(line["amount_micros"], invoice.currency),
                ]
            )
    pdf.ln(4)
    pdf.set_font("Helvetica", "B", 10)
    for name, amount in _totals(invoice):
        pdf.cell(
            0,
            6,
            f"{name.replace('_', ' ').title()}: {_money(amount, invoice.currency)}",
            new_x="LMARGIN",
            new_y="NEXT",
        )
    return bytes(pdf.output())
