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
