"""Alembic environment: runs migrations on the configured store (SQLite or PostgreSQL)."""

from __future__ import annotations

import importlib

from alembic import context

from store.db import get_engine
from store.models import Base

# Domain packages that declare tables on Base (imported so autogenerate sees them).
MODEL_MODULES: list[str] = [
    "store.models",
    "plans.models",
    "webhooks.models",
    "idempotency.models",
    "deployments.models",
    "resources.models",
    "crawler.models",
    "projects.models",
    "assistants.models",
    "rag.models",
    "billing.models",
    "alerts.models",
]

for module in MODEL_MODULES:
    importlib.import_module(module)

target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = get_engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
