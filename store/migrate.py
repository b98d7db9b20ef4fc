"""Run the store's Alembic migrations programmatically (``conveyor migrate``, ``conveyor up``),
creating the PostgreSQL database first when it does not exist yet."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from common.errors import Unavailable
from config import get_settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def upgrade() -> None:
    """Bring the store to the newest revision of every branch (domains add their own heads)."""
    command.upgrade(alembic_config(), "heads")


_checked: set[str] = set()


def require_migrated() -> None:
    """Raise ``NotMigrated`` (one line saying what to run) unless the store exists and is at
    every head; never creates an empty SQLite file on the way. Checked once per process."""
    url = get_settings().resolved_database_url()
    if url in _checked:
        return
    parsed = make_url(url)
    sqlite_file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if sqlite_file and not Path(sqlite_file).exists():
        raise NotMigrated(f"No store at {sqlite_file}: run `conveyor migrate` first.")
    try:
        current = is_current()
    except Exception as exc:
        raise NotMigrated(
            f"The store at {parsed.render_as_string(hide_password=True)} cannot be read "
            f"({type(exc).__name__}): run `conveyor migrate`, or check CONVEYOR_DATABASE_URL."
        ) from exc
    if not current:
        raise NotMigrated(
            f"The store at {parsed.render_as_string(hide_password=True)} is not migrated: "
            "run `conveyor migrate` first."
        )
    _checked.add(url)


class NotMigrated(Unavailable):
    """The store is missing or behind the code's migrations (503 ``unavailable`` over HTTP)."""


def is_current() -> bool:
    """Whether the store is at every head revision (what ``upgrade()`` brings it to)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from store.db import get_engine

    script = ScriptDirectory.from_config(alembic_config())
    with get_engine().connect() as connection:
        current = MigrationContext.configure(connection).get_current_heads()
    # The version table keeps only the tips of what ran (a merged branch's head is dropped
    # from it): the store is current when every head is among the applied revisions.
    applied = {
        rev.revision
        for rev in script.revision_map.iterate_revisions(
            current, "base", inclusive=True, assert_relative_length=False
        )
        if rev is not None
    }
    return set(script.get_heads()) <= applied


def wait_until_current(timeout: float = 900.0, interval: float = 2.0) -> None:
    """Block until the store is migrated (a Kubernetes init container runs this while the
    migration Job works); raise ``TimeoutError`` past ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            if is_current():
                return
        except Exception as exc:  # the store is not reachable yet: keep waiting
            last = f"{type(exc).__name__}: {exc}"
        else:
            last = "the store is not at the newest revision yet"
        if time.monotonic() > deadline:
            raise TimeoutError(f"store not migrated after {timeout} s ({last})")
        time.sleep(interval)


def _libpq(url: URL, database: str | None = None) -> str:
    if database is not None:
        url = url.set(database=database)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def ensure_database(database_url: str | None = None) -> str | None:
    """Create the configured PostgreSQL database when it is missing, from the server's
    ``postgres`` maintenance database; return its name when it was created. Raises
    ``Unavailable`` with a one-line how-to when it is missing and cannot be created."""
    url = make_url(database_url or get_settings().resolved_database_url())
    if url.get_backend_name() != "postgresql" or not url.database:
        return None  # SQLite creates its file itself
    try:
        psycopg.connect(_libpq(url), connect_timeout=10).close()
        return None
    except psycopg.OperationalError as missing:
        first_error = missing
    name = url.database
    try:
        with psycopg.connect(_libpq(url, "postgres"), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is not None:
                raise first_error  # it exists: the first error was about something else
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        how = f"createdb -h {url.host or 'localhost'} -p {url.port or 5432}"
        how += f" -U {url.username} {name}" if url.username else f" {name}"
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise Unavailable(
            f"Cannot use or create PostgreSQL database {name!r} ({reason}); "
            f"if it does not exist, create it with: {how}"
        ) from exc
    return name


if __name__ == "__main__":  # python -m store.migrate --wait
    import sys

    if sys.argv[1:] == ["--wait"]:
        wait_until_current()
    else:
        upgrade()
