"""Fixtures for the resources tests: real PostgreSQL / Redis / moto S3 servers on 127.0.0.1.

Every database, role, key and bucket a test creates carries the ``cvy_res_`` prefix and a
random ident, and is removed after the test. A missing server skips locally, fails in CI.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from resources.settings import ResourceSettings

PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _unavailable(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not reachable (CI=true: a missing service fails)")
    pytest.skip(f"{what} is not reachable")


@pytest.fixture(scope="session")
def pg_available() -> None:
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.OperationalError:
        _unavailable("PostgreSQL at 127.0.0.1:5432")


@pytest.fixture(scope="session")
def redis_available() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except redis.ConnectionError:
        _unavailable("Redis at 127.0.0.1:6379")


@pytest.fixture
def res_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResourceSettings]:
    # Dedicated instances run as the postgres OS user: their directories must be reachable.
    data_dir = Path(f"/tmp/cvy_res_{secrets.token_hex(4)}")
    data_dir.mkdir(mode=0o755)
    yield ResourceSettings(
        pg_admin_dsn=PG_DSN,
        redis_admin_url=REDIS_URL,
        data_dir=data_dir,
        name_prefix="cvy_res_",
        pg_archive_timeout_s=1,
    )
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def ident() -> str:
    return secrets.token_hex(5)


def connect_url(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, connect_timeout=5, autocommit=True)
