"""``access_0001`` on a store that already has keys, on SQLite (the embedded default) and on
PostgreSQL: every old key becomes a key of its organisation's service-account member (an
owner) with every scope, and keeps working."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]


def _run(database_url: str, tmp_path: Path) -> dict[str, object]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_DATA_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.access.migration_check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _check(result: dict[str, object]) -> None:
    from access.scopes import ALL_SCOPES

    assert result["org_ok"] is True
    assert result["role"] == "owner"
    assert result["scopes"] == ["*"]
    assert result["effective"] == len(ALL_SCOPES)
    assert result["member"]


def test_backfill_on_sqlite(tmp_path: Path) -> None:
    _check(_run(f"sqlite:///{tmp_path / 'store.db'}", tmp_path))


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    name = f"cvy_access_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = os.environ["CONVEYOR_DATABASE_URL"].rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_backfill_on_postgresql(migrated: object, fresh_pg: str, tmp_path: Path) -> None:
    _check(_run(fresh_pg, tmp_path))
