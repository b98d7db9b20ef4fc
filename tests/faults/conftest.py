"""Fixtures of the fault-injection tests: Conveyor's production shape (private PostgreSQL, private
Redis with ``appendonly yes``, ``conveyor migrate``, then ``conveyor api``, ``conveyor worker
--group light`` and ``conveyor beat`` as separate processes), and the recovery table printed
with the terminal summary (and as each fault ends, under ``-s``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from resources.backends.base import free_port
from tests.conftest import IN_CI
from tests.faults.harness import (
    FAST_RECOVERY_ENV,
    FaultReport,
    Platform,
    PrivatePostgres,
    PrivateRedis,
    base_env,
    scratch_dir,
)

REPORTS: list[FaultReport] = []


def record(report: FaultReport) -> None:
    """Add a line to the recovery table (and print it for ``-s`` runs)."""
    REPORTS.append(report)
    print(f"\n{FaultReport.HEADER}\n{report.line()}", flush=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTS:
        terminalreporter.section("fault injection: accepted / completed / lost / recovery")
        terminalreporter.line(FaultReport.HEADER)
        for report in REPORTS:
            terminalreporter.line(report.line())


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI=true: a missing server fails)")
    pytest.skip(what)


def pg_bin_dir() -> Path:
    from config import get_settings
    from resources.settings import ResourceSettings

    bin_dir = ResourceSettings.from_platform(get_settings()).pg_bin_dir
    if not (bin_dir / "initdb").exists():
        _missing(f"no PostgreSQL server binaries in {bin_dir}")
    return bin_dir


@pytest.fixture(scope="module")
def private_servers(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[PrivatePostgres, PrivateRedis, Path]]:
    """A PostgreSQL cluster and a Redis of this module's own, and a scratch directory (kept,
    with the processes' logs, when a test failed)."""
    from workers.embedded import redis_server_binary

    root = scratch_dir("cvy_faults_")
    postgres = PrivatePostgres(root / "pg", pg_bin_dir())
    redis_server = PrivateRedis(root / "redis", redis_server_binary())
    failed_before = request.session.testsfailed
    try:
        postgres.init()
        postgres.start()
        redis_server.start()
        yield postgres, redis_server, root
    finally:
        redis_server.stop()
        postgres.stop("immediate")
        if request.session.testsfailed == failed_before:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def platform(
    private_servers: tuple[PrivatePostgres, PrivateRedis, Path],
) -> Iterator[Platform]:
    """Conveyor's API, a worker and beat as separate processes, with an organisation key; the
    store's database does not exist before ``conveyor migrate`` creates it."""
    postgres, redis_server, root = private_servers
    env = base_env(root / "data")
    env.update(
        CONVEYOR_DATABASE_URL=postgres.url(),
        CONVEYOR_BROKER_URL=redis_server.url,
        CONVEYOR_API_HOST="127.0.0.1",
        CONVEYOR_LOG_LEVEL="INFO",
        CONVEYOR_WORKER_CONCURRENCY="2",
        **FAST_RECOVERY_ENV,
    )
    logs = root / "logs"
    logs.mkdir()
    platform = Platform(postgres, redis_server, env, logs, api_port=free_port())
    env["CONVEYOR_API_PORT"] = str(platform.api_port)
    try:
        migrated = platform.cli("migrate")
        assert "created database 'conveyor'" in migrated.stderr, migrated.stderr
        platform.cli("orgs", "create", "faults", "--plan", "unlimited")
        platform.key = platform.cli("keys", "create", "--org", "faults").stdout.strip()
        platform.start("api", "api")
        platform.start_worker()
        platform.start("beat", "beat")
        platform.wait_healthy()
        # Warm up: the worker consumes and the store answers before any fault.
        first = platform.submit_accepted(timeout=60)
        _, done = platform.ledger().wait([first], timeout=120)
        assert done is not None, platform.log_tail("worker")
        yield platform
    finally:
        platform.stop_all()
        print(f"\nfault-injection logs (kept when a test failed): {logs}")
