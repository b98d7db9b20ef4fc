"""Alembic migrations of the store (run with ``conveyor migrate``)."""
