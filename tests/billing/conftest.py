"""Billing fixtures: the crawler's generated site and allow-list (for crawls run by real
workers), the operator key, and helpers that read an organisation's usage events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from tests.crawler.conftest import crawl_config, crawl_settings, runtime, site

__all__ = ["crawl_config", "crawl_settings", "runtime", "site"]

OPERATOR_KEY = "op_test_" + "k" * 24


@pytest.fixture
def operator(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    from config import get_settings

    monkeypatch.setattr(get_settings(), "operator_key", SecretStr(OPERATOR_KEY))
    yield {"Authorization": f"Bearer {OPERATOR_KEY}"}


def events_of(org_id: str) -> list[Any]:
    """Every usage event of ``org_id`` (the table, not the rollups)."""
    from sqlalchemy import select

    from billing.models import UsageEvent
    from store.db import session_scope

    with session_scope() as session:
        rows = session.scalars(
            select(UsageEvent).where(UsageEvent.org_id == org_id).order_by(UsageEvent.id)
        ).all()
        session.expunge_all()
        return list(rows)
