"""Run the store's Alembic migrations programmatically (``conveyor migrate``, ``conveyor up``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def upgrade() -> None:
    """Bring the store to the newest revision of every branch (domains add their own heads)."""
    command.upgrade(alembic_config(), "heads")


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


if __name__ == "__main__":  # python -m store.migrate --wait
    import sys

    if sys.argv[1:] == ["--wait"]:
        wait_until_current()
    else:
        upgrade()
