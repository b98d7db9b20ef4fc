"""A self-hosted box is not a SaaS tier: on the embedded default a new organisation gets the
``unlimited`` plan; production (a configured database) keeps ``free`` unless a plan is set."""

from __future__ import annotations

from typing import Any

from config.settings import Settings


def test_the_embedded_default_gives_new_organisations_no_quotas() -> None:
    assert Settings(database_url="").resolved_default_plan() == "unlimited"
    production = Settings(database_url="postgresql+psycopg://db/conveyor")
    assert production.resolved_default_plan() == "free"
    assert Settings(default_plan="pro", database_url="").resolved_default_plan() == "pro"


def test_a_new_organisation_takes_the_configured_default(migrated: Any, monkeypatch: Any) -> None:
    from config import get_settings
    from store import orgs
    from store.db import session_scope

    monkeypatch.setattr(get_settings(), "default_plan", "unlimited")
    with session_scope() as session:
        org = orgs.get_or_create_org(session, "default-plan-test-org")
        assert org.plan == "unlimited"
