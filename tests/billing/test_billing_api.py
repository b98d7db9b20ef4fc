"""The billing API without workers: recording is idempotent, usage and cost add up from the
rollups, credits need the operator key, a prepaid organisation out of allowance and credits
gets 402 before anything is queued, and closing a month is idempotent, with late usage billed
in the next month as an adjustment; invoices download as PDF and CSV and can be marked paid."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from billing import invoices, service
from billing.service import Usage
from common.timeutil import utcnow
from plans.service import period_key
from store.db import session_scope
from store.models import Job
from tests.billing.conftest import events_of
from tests.conftest import make_org


def _usage(
    org_id: str, meter: str, qty: int, dim: str, key: str, at: datetime | None = None
) -> Usage:
    return Usage(org_id, meter, qty, dim, "test", key, at or utcnow(), f"test:{key}:{meter}:{dim}")


def record(*usages: Usage) -> int:
    with session_scope() as session:
        return service.record_usage(session, usages)


def test_recording_twice_writes_once_and_totals_are_priced(client: Any, org: Any) -> None:
    batch = [
        _usage(org.org_id, "pages_crawled", 40, "static", "a"),
        _usage(org.org_id, "pages_crawled", 3, "rendered", "a"),
        _usage(org.org_id, "tokens_out", 2_500, "tiny", "b"),
        _usage(org.org_id, "jobs", 1, "crawl", "a"),
    ]
    assert record(*batch) == 4
    assert record(*batch) == 0  # a redelivered task / rerun beat: nothing twice
    assert len(events_of(org.org_id)) == 4
    with session_scope() as session:
        totals = service.period_totals(session, org.org_id, "current")
    # plan "unlimited" is priced as the enterprise tier (70 % of the base prices)
    assert totals["pages_crawled"].quantity == 43
    assert totals["pages_crawled"].cost_micros == 40 * 140 + 3 * 700
    assert totals["tokens_out"].cost_micros == (2_500 * 210 + 500) // 1_000
    r = client.get("/v1/billing/usage", headers=org.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["period"] == period_key() and body["tier"] == "enterprise"
    assert body["period_start"].endswith("Z") or "+00:00" in body["period_start"]
    meters = {m["meter"]: m for m in body["meters"]}
    assert meters["pages_crawled"]["quantity"] == 43 and meters["jobs"]["quantity"] == 1
    assert body["subtotal_micros"] == sum(t.cost_micros for t in totals.values())
    by_day = client.get("/v1/billing/usage?group_by=day", headers=org.headers).json()
    assert {line["day"] for line in by_day["lines"]} == {utcnow().strftime("%Y-%m-%d")}
    by_subject = client.get("/v1/billing/usage?group_by=subject", headers=org.headers).json()
    assert {(x["subject_id"], x["meter"], x["quantity"]) for x in by_subject["lines"]} >= {
        ("a", "pages_crawled", 40),
        ("b", "tokens_out", 2_500),
    }
    for bad in ("period=2026-13", "period=last", "group_by=model", "foo=1"):
        r = client.get(f"/v1/billing/usage?{bad}", headers=org.headers)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", bad
    assert client.get("/v1/billing/usage").status_code == 401


def test_credits_need_the_operator_key(client: Any, org: Any, operator: dict[str, str]) -> None:
    grant = {"org_id": org.org_id, "amount_micros": 2_000_000, "reason": "welcome"}
    r = client.post("/v1/billing/credits", json=grant, headers=org.headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = client.post("/v1/billing/credits", json=grant, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = client.post("/v1/billing/credits", json=grant, headers=operator)
    assert r.status_code == 201, r.text
    assert r.json()["balance_micros"] == 2_000_000
    r = client.post("/v1/billing/credits", json={**grant, "org_id": "missing"}, headers=operator)
    assert r.status_code == 404
    usage = client.get("/v1/billing/usage", headers=org.headers).json()
    assert usage["credits_balance_micros"] == 2_000_000


def test_out_of_credit_is_refused_before_anything_is_queued(
    client: Any, operator: dict[str, str]
) -> None:
    poor = make_org(plan="free")  # prepaid: 5 USD allowance, 0 credits
    # The month's usage already costs the whole allowance (25 000 static pages * 200 micros).
    record(_usage(poor.org_id, "pages_crawled", 25_000, "static", "old-crawl"))
    r = client.post("/v1/crawls", json={"url": "https://example.com/"}, headers=poor.headers)
    assert r.status_code == 402, r.text
    error = r.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["details"]["needed"] == 100 + 200 and error["details"]["balance"] == 0
    with session_scope() as session:
        jobs = session.scalar(
            select(func.count()).select_from(Job).where(Job.org_id == poor.org_id)
        )
    assert jobs == 0  # nothing inserted, so nothing queued
    grant = {"org_id": poor.org_id, "amount_micros": 300, "reason": "top-up"}
    assert client.post("/v1/billing/credits", json=grant, headers=operator).status_code == 201
    with session_scope() as session:  # now exactly enough for one crawl's least cost
        service.check_credits(session, poor.org_id, "crawl", {})


def test_closing_a_month_is_idempotent_and_late_usage_is_an_adjustment(
    client: Any, operator: dict[str, str]
) -> None:
    buyer = make_org(plan="startup")
    last = service.previous_period(period_key())
    start, _ = service.period_bounds(last)
    at = start + timedelta(days=3)
    record(
        _usage(buyer.org_id, "pages_crawled", 10_000, "static", "p1", at),
        _usage(buyer.org_id, "gpu_seconds", 100_000, "a100", "g1", at),
    )
    grant = {"org_id": buyer.org_id, "amount_micros": 1_000_000, "reason": "promo"}
    client.post("/v1/billing/credits", json=grant, headers=operator)
    with session_scope() as session:
        first = invoices.close_org_period(session, buyer.org_id, last)
        assert first is not None
        invoice_id = first.id
    with session_scope() as session:  # a rerun (beat twice, CLI) makes no second invoice
        assert invoices.close_org_period(session, buyer.org_id, last) is None
    from billing.jobs import close_periods

    assert invoice_id not in close_periods(last, buyer.name)
    r = client.get(f"/v1/billing/invoices/{invoice_id}", headers=buyer.headers)
    assert r.status_code == 200, r.text
    inv = r.json()
    # startup tier: 90 % of base; static page 180, a100 second 990 micros
    expected = 10_000 * 180 + 100_000 * 990
    assert inv["subtotal_micros"] == expected
    assert inv["allowance_micros"] == 50_000_000 and inv["credits_applied_micros"] == 1_000_000
    assert inv["total_micros"] == expected - 50_000_000 - 1_000_000
    assert inv["status"] == "open" and inv["period"] == last
    assert (
        client.get("/v1/billing/usage", headers=buyer.headers).json()["credits_balance_micros"] == 0
    )
    # A late event of the closed month goes into the current one, as an adjustment line.
    record(_usage(buyer.org_id, "pages_crawled", 7, "static", "late", at))
    (late,) = [e for e in events_of(buyer.org_id) if e.subject_id == "late"]
    assert late.period == period_key()
    listed = client.get("/v1/billing/invoices", headers=buyer.headers).json()
    assert [i["id"] for i in listed["data"]] == [invoice_id] and listed["next_cursor"] is None
    pdf = client.get(f"/v1/billing/invoices/{invoice_id}.pdf", headers=buyer.headers)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-") and pdf.content.rstrip().endswith(b"%%EOF")
    raw = client.get(f"/v1/billing/invoices/{invoice_id}.csv", headers=buyer.headers)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(raw.text)))
    assert {(r["meter"], r["dimension"], r["quantity"]) for r in rows[:2]} == {
        ("gpu_seconds", "a100", "100000"),
        ("pages_crawled", "static", "10000"),
    }
    assert rows[-1]["meter"] == "total" and int(rows[-1]["amount_micros"]) == inv["total_micros"]
    paid = client.post(f"/v1/billing/invoices/{invoice_id}/pay", headers=buyer.headers)
    assert paid.status_code == 200 and paid.json()["status"] == "paid"
    again = client.post(f"/v1/billing/invoices/{invoice_id}/pay", headers=buyer.headers)
    assert again.json()["paid_at"] == paid.json()["paid_at"]
    other = make_org()
    assert (
        client.get(f"/v1/billing/invoices/{invoice_id}", headers=other.headers).status_code == 404
    )
    assert (
        client.get(f"/v1/billing/invoices/{invoice_id}.pdf", headers=other.headers).status_code
        == 404
    )
    with session_scope() as session, pytest.raises(Exception, match="not ended"):
        invoices.close_org_period(session, buyer.org_id, period_key())
    assert datetime.now(UTC) >= start


def test_voiding_an_invoice_returns_its_credits_and_blocks_payment(
    client: Any, operator: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings
    from webhooks.models import WebhookDelivery

    buyer = make_org(plan="startup")
    monkeypatch.setattr(get_settings(), "crawl_allowed_hosts", "127.0.0.1")
    hook = client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["invoice.voided", "invoice.paid"]},
        headers=buyer.headers,
    )
    assert hook.status_code == 201, hook.text
    last = service.previous_period(period_key())
    at = service.period_bounds(last)[0] + timedelta(days=2)
    record(_usage(buyer.org_id, "gpu_seconds", 100_000, "a100", "v1", at))  # 99 USD
    grant = {"org_id": buyer.org_id, "amount_micros": 3_000_000, "reason": "promo"}
    assert client.post("/v1/billing/credits", json=grant, headers=operator).status_code == 201
    with session_scope() as session:
        closed = invoices.close_org_period(session, buyer.org_id, last)
        assert closed is not None and closed.status == "open"
        invoice_id = closed.id

    def balance() -> int:
        usage = client.get("/v1/billing/usage", headers=buyer.headers).json()
        return int(usage["credits_balance_micros"])

    assert balance() == 0  # all 3 USD applied to the invoice

    other = make_org(plan="startup")  # another organisation cannot void it: 404, as if absent
    r = client.post(f"/v1/billing/invoices/{invoice_id}/void", headers=other.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    voided = client.post(f"/v1/billing/invoices/{invoice_id}/void", headers=buyer.headers)
    assert voided.status_code == 200, voided.text
    body = voided.json()
    assert body["status"] == "void" and body["voided_at"] and body["paid_at"] is None
    assert balance() == 3_000_000  # the applied credits came back
    again = client.post(f"/v1/billing/invoices/{invoice_id}/void", headers=buyer.headers)
    assert again.status_code == 200 and again.json()["voided_at"] == body["voided_at"]
    assert balance() == 3_000_000  # refunded once
    pay = client.post(f"/v1/billing/invoices/{invoice_id}/pay", headers=buyer.headers)
    assert pay.status_code == 409 and pay.json()["error"]["code"] == "conflict"
    with session_scope() as session:  # the month stays closed: a rerun makes no second invoice
        assert invoices.close_org_period(session, buyer.org_id, last) is None
        deliveries = session.scalars(
            select(WebhookDelivery.event_type).where(WebhookDelivery.org_id == buyer.org_id)
        ).all()
    assert deliveries == ["invoice.voided"]
    listed = client.get("/v1/billing/invoices", headers=buyer.headers).json()["data"]
    assert [(i["id"], i["status"]) for i in listed] == [(invoice_id, "void")]

    # A paid invoice cannot be voided.
    record(_usage(other.org_id, "gpu_seconds", 100_000, "a100", "v2", at))
    with session_scope() as session:
        second = invoices.close_org_period(session, other.org_id, last)
        assert second is not None
        paid_id = second.id
    assert client.post(f"/v1/billing/invoices/{paid_id}/pay", headers=other.headers).is_success
    r = client.post(f"/v1/billing/invoices/{paid_id}/void", headers=other.headers)
    assert r.status_code == 409 and r.json()["error"]["details"] == {"status": "paid"}
    assert (
        client.get(f"/v1/billing/invoices/{paid_id}", headers=other.headers).json()["status"]
        == "paid"
    )


def test_two_concurrent_voids_refund_once(client: Any, operator: dict[str, str]) -> None:
    import threading

    buyer = make_org(plan="startup")
    last = service.previous_period(period_key())
    at = service.period_bounds(last)[0] + timedelta(days=1)
    record(_usage(buyer.org_id, "gpu_seconds", 100_000, "a100", "race", at))
    grant = {"org_id": buyer.org_id, "amount_micros": 2_000_000, "reason": "promo"}
    assert client.post("/v1/billing/credits", json=grant, headers=operator).status_code == 201
    with session_scope() as session:
        closed = invoices.close_org_period(session, buyer.org_id, last)
        assert closed is not None and closed.credits_applied_micros == 2_000_000
        invoice_id = closed.id
    barrier = threading.Barrier(2)
    statuses: list[str] = []

    def void() -> None:
        with session_scope() as session:
            barrier.wait()
            statuses.append(invoices.void(session, buyer.org_id, invoice_id).status)

    threads = [threading.Thread(target=void) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert statuses == ["void", "void"]
    with session_scope() as session:
        assert service.credits_balance(session, buyer.org_id) == 2_000_000  # refunded once
