"""Fixtures of the API-contract tests: organisations on the real plans, a local receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api_contract.receiver import Receiver, start_receiver
from tests.conftest import OrgKey, make_org


@pytest.fixture
def free_org(migrated: dict[str, object]) -> OrgKey:
    """A fresh organisation on the default "free" plan (60 writes / 120 reads a minute)."""
    return make_org(plan="free")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = start_receiver()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.api_contract.test_schemathesis import SUMMARY

    for line in SUMMARY:
        terminalreporter.write_line(line)
