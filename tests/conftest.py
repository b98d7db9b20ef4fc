"""Shared fixtures: a private PostgreSQL database and Redis DB per test session, the store
migrated, the API app with an organisation key, and a real Celery worker in a thread.

The environment is set before any project module is imported, so every process-wide cache
(settings, engine, Celery app) sees the test services. A missing service skips locally and
fails when ``CI=true``.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get("CONVEYOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("CONVEYOR_TEST_REDIS", "redis://127.0.0.1:6379")


def _service_missing(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc}); start it (see README)."
    if IN_CI:
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)


def _claim_redis_db() -> int:
    """Claim a free Redis database number so parallel test sessions don't share queues."""
    admin = redis.Redis.from_url(f"{REDIS_BASE}/0")
    for db in range(1, 16):
        if admin.set(f"conveyor:test-db-lock:{db}", os.getpid(), nx=True, ex=3600):
            return db
    raise RuntimeError("no free Redis database for tests")


def _create_pg_database() -> str:
    name = f"cvy_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


_STATE: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Point every Conveyor setting at this session's private services."""
    data_dir = Path(tempfile.mkdtemp(prefix="conveyor-test-"))
    os.environ["CONVEYOR_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("CONVEYOR_DIAGNOSTICS_ALLOW_CRASH", "true")
    os.environ.setdefault("CONVEYOR_REAPER_GRACE_SECONDS", "1")
    _STATE["data_dir"] = data_dir
    try:
        db = _claim_redis_db()
        _STATE["redis_db"] = db
        os.environ["CONVEYOR_BROKER_URL"] = f"{REDIS_BASE}/{db}"
        redis.Redis.from_url(os.environ["CONVEYOR_BROKER_URL"]).flushdb()
    except redis.RedisError as exc:
        _STATE["redis_error"] = exc
    try:
        name = _create_pg_database()
        _STATE["pg_db"] = name
        os.environ["CONVEYOR_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    except psycopg.Error as exc:
        _STATE["pg_error"] = exc


def pytest_unconfigure(config: pytest.Config) -> None:
    if "redis_db" in _STATE:
        try:
            client = redis.Redis.from_url(f"{REDIS_BASE}/{_STATE['redis_db']}")
            client.flushdb()
            redis.Redis.from_url(f"{REDIS_BASE}/0").delete(
                f"conveyor:test-db-lock:{_STATE['redis_db']}"
            )
        except redis.RedisError:
            pass
    if "pg_db" in _STATE:
        try:
            from store.db import reset_engine

            reset_engine()
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{_STATE["pg_db"]}" WITH (FORCE)')
        except Exception:
            pass


@pytest.fixture(scope="session")
def services() -> dict[str, object]:
    """The session's PostgreSQL database and Redis URL (skip/fail when missing)."""
    if "redis_error" in _STATE:
        _service_missing("Redis", _STATE["redis_error"])  # type: ignore[arg-type]
    if "pg_error" in _STATE:
        _service_missing("PostgreSQL", _STATE["pg_error"])  # type: ignore[arg-type]
    return {
        "database_url": os.environ["CONVEYOR_DATABASE_URL"],
        "broker_url": os.environ["CONVEYOR_BROKER_URL"],
        "data_dir": _STATE["data_dir"],
    }


@pytest.fixture(scope="session")
def migrated(services: dict[str, object]) -> dict[str, object]:
    from store.migrate import upgrade

    upgrade()
    return services


@pytest.fixture(scope="session")
def app(migrated: dict[str, object]):  # type: ignore[no-untyped-def]
    from api.app import create_app

    return create_app()


@pytest.fixture(scope="session")
def client(app):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


class OrgKey:
    def __init__(self, org_id: str, name: str, key: str) -> None:
        self.org_id = org_id
        self.name = name
        self.key = key
        self.headers = {"Authorization": f"Bearer {key}"}


def make_org(name: str | None = None, plan: str = "unlimited") -> OrgKey:
    """A fresh organisation + key. Plan "unlimited" keeps quotas and rate limits out of tests
    that are not about them (tests/api_contract passes "free" or its own plans)."""
    from store import orgs
    from store.db import session_scope

    name = name or f"org-{uuid.uuid4().hex[:10]}"
    with session_scope() as session:
        org = orgs.get_or_create_org(session, name, plan=plan)
        raw = orgs.create_key(session, org.id, name="test").raw
        return OrgKey(org.id, name, raw)


@pytest.fixture
def org(migrated: dict[str, object]) -> OrgKey:
    """A fresh organisation with one API key (tests never share an organisation)."""
    return make_org()


@pytest.fixture
def other_org(migrated: dict[str, object]) -> OrgKey:
    return make_org()


@pytest.fixture(scope="session")
def worker(migrated: dict[str, object]) -> Iterator[object]:
    """A real Celery worker (threads pool) consuming every queue but ``inference`` and
    ``ingest``, in this process. Inference jobs need a worker that loaded models: the inference
    tests start one as a subprocess, and this worker must not take their jobs (nor block its
    threads on them). Ingest jobs write the chunk index their stack's API reads (an embedded file
    or a pgvector server per test module): the RAG tests start their own ingest worker with that
    index, and a job this worker took would land in this process's default index instead."""
    from celery.contrib.testing.worker import start_worker

    from config.queues import QUEUES
    from workers.app import celery_app

    celery_app.loader.import_default_modules()
    with start_worker(
        celery_app,
        pool="threads",
        concurrency=8,
        perform_ping_check=False,
        queues=[queue for queue in QUEUES if queue not in ("inference", "ingest")],
        shutdown_timeout=30,
    ) as w:
        yield w


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live_api(app: Any) -> Iterator[str]:
    """The session's API served by a real uvicorn on a free port (for subprocesses and
    browsers) while one test module runs; yields its base URL."""
    import uvicorn

    port = _free_port()
    # The asyncio loop, not uvloop: uvloop in a second thread of the test process has crashed
    # (a segfault in its garbage collection) under the Firecrawl SDK test's load.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
