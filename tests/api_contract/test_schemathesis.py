"""Property-based contract test: schemathesis generates requests for every documented operation
(a bounded number of examples each) and checks every answer: no 5xx, only documented status
codes, documented content types and headers, bodies matching their schema, invalid data rejected.

Driven by hypothesis directly (schemathesis' pytest plugin does not load under pytest 9). The run
prints ``schemathesis: N operations, M requests, K failures`` for CI's log.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CHECKS

from tests.conftest import make_org

EXAMPLES = int(os.environ.get("CONVEYOR_SCHEMATHESIS_EXAMPLES", "10"))
#: Checks that assume what this API does not promise: that any schema-valid id exists
#: (positive_data_acceptance: random ids are rightly 404) and stateful resource checks.
#: Shown in pytest's terminal summary (tests/api_contract/conftest.py) so CI's log has the figures.
SUMMARY: list[str] = []
EXCLUDED_CHECKS = ("positive_data_acceptance", "use_after_free", "ensure_resource_availability")


def _excluded() -> list[Any]:
    by_name = {check.__name__: check for check in CHECKS.get_all()}
    return [by_name[name] for name in EXCLUDED_CHECKS if name in by_name]


def _fuzz(operation: Any, auth: dict[str, str], excluded: list[Any], calls: dict[str, int]) -> None:
    label = operation.label

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        calls[label] = calls.get(label, 0) + 1
        case.call_and_validate(headers={**(case.headers or {}), **auth}, excluded_checks=excluded)

    run()


def test_every_operation_honours_its_documented_contract(migrated: Any, monkeypatch: Any) -> None:
    from api.app import create_app
    from config import get_settings
    from plans import service as plans
    from plans.schemas import PlanLimits
    from store.db import session_scope
    from workers.app import celery_app

    # Rate limits (tested elsewhere) would turn the unauthenticated probes into 429s.
    monkeypatch.setattr(get_settings(), "ratelimit_enabled", False)
    # Nothing generated here may run: a worker of the test session would otherwise provision,
    # deploy and infer whatever the fuzzer asked for. Jobs created through jobs.service.create_job
    # stop at the quota (402, documented); any other message never reaches the broker.
    monkeypatch.setattr(celery_app, "send_task", lambda *args, **kwargs: None)
    big = 10**9
    with session_scope() as session:
        plans.define_plan(
            session,
            PlanLimits(
                name="fuzz-no-jobs",
                pages_per_month=big,
                concurrent_jobs=0,
                gpu_seconds_per_month=big,
                max_pages_per_crawl=10**6,
                read_per_minute=big,
                write_per_minute=big,
            ),
        )
    app = create_app()
    fuzz_org = make_org(plan="fuzz-no-jobs")
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    excluded = _excluded()
    calls: dict[str, int] = {}
    failures: list[str] = []
    for result in loaded.get_all_operations():
        operation = result.ok()
        try:
            _fuzz(operation, fuzz_org.headers, excluded, calls)
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failures
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    SUMMARY.append(
        f"schemathesis: {len(calls)} operations x up to {EXAMPLES} examples = "
        f"{sum(calls.values())} requests, {len(failures)} failing operations"
    )
    assert len(calls) >= 20
    assert not failures, "\n\n".join(failures)
