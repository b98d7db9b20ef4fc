"""Production settings derive from the configured servers: the resources admin DSN and Redis URL
default to the platform's own PostgreSQL and Redis (never a silent local 5432/6379), and
``conveyor migrate`` creates a missing PostgreSQL database or says in one line how to."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from config.settings import Settings
from resources.backends import pg
from resources.errors import BackendError
from resources.settings import ResourceSettings

UNSET = {"resources_pg_admin_dsn": "", "resources_redis_admin_url": "", "redis_url": ""}


def test_resources_admin_servers_default_to_the_platforms_own() -> None:
    settings = Settings(
        database_url="postgresql+psycopg://conveyor:s3cret@db.internal:6543/conveyor?sslmode=require",
        broker_url="redis://broker.internal:6380/2",
        **UNSET,
    )
    derived = ResourceSettings.from_platform(settings)
    assert derived.pg_admin_dsn == (
        "postgresql://conveyor:s3cret@db.internal:6543/conveyor?sslmode=require"
    )
    assert pg.admin_port(derived.pg_admin_dsn) == 6543
    assert derived.redis_admin_url == "redis://broker.internal:6380/2"
    # A separate Redis for limits and streams is the platform's Redis too.
    with_redis = Settings(**{**UNSET, "redis_url": "redis://cache.internal:6379/1"})
    assert with_redis.resolved_resources_redis_admin_url() == "redis://cache.internal:6379/1"


def test_explicit_resources_admin_settings_win() -> None:
    settings = Settings(
        database_url="postgresql+psycopg://app@db.internal/conveyor",
        resources_pg_admin_dsn="postgresql://admin@tenants.internal/postgres",
        resources_redis_admin_url="redis://tenants.internal:6379/0",
    )
    derived = ResourceSettings.from_platform(settings)
    assert derived.pg_admin_dsn == "postgresql://admin@tenants.internal/postgres"
    assert derived.redis_admin_url == "redis://tenants.internal:6379/0"


def test_sqlite_store_leaves_the_shared_postgres_tier_unconfigured(tmp_path: Path) -> None:
    settings = Settings(database_url="", data_dir=tmp_path, **UNSET)
    derived = ResourceSettings.from_platform(settings)
    assert derived.pg_admin_dsn == ""
    assert derived.redis_admin_url == settings.resolved_broker_url()
    with pytest.raises(BackendError, match="CONVEYOR_RESOURCES_PG_ADMIN_DSN"):
        pg.connect(derived.pg_admin_dsn)
    with pytest.raises(BackendError, match="CONVEYOR_RESOURCES_PG_ADMIN_DSN"):
        pg.dsn_for(derived.pg_admin_dsn, "app")


def migrate(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "migrate"],
        env={**os.environ, "CONVEYOR_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=180,
    )


def make_server_url() -> str:
    """The test session's PostgreSQL server, as a SQLAlchemy URL without a database."""
    url = os.environ["CONVEYOR_DATABASE_URL"]
    return url.rsplit("/", 1)[0]


def test_migrate_creates_a_missing_database(services: dict[str, object]) -> None:
    from tests.conftest import PG_ADMIN_URL

    server = make_server_url()
    name = f"cvy_test_migrate_{secrets.token_hex(4)}"
    try:
        first = migrate(f"{server}/{name}")
        assert first.returncode == 0, first.stderr
        assert f"created database '{name}'" in first.stderr
        with psycopg.connect(f"{server.replace('+psycopg', '')}/{name}") as conn:
            assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
        again = migrate(f"{server}/{name}")
        assert again.returncode == 0, again.stderr
        assert "created database" not in again.stderr
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrate_says_in_one_line_how_to_create_the_database() -> None:
    from resources.backends.base import free_port

    port = free_port()  # nothing listens there
    done = migrate(f"postgresql+psycopg://conveyor@127.0.0.1:{port}/conveyor")
    assert done.returncode == 1
    message = done.stderr.strip()
    assert "\n" not in message, message
    assert f"createdb -h 127.0.0.1 -p {port} -U conveyor conveyor" in message
