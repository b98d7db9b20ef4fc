"""The process environment that child processes inherit (the one read of os.environ outside
Settings: a replica or server process needs PATH, PYTHONPATH, locale, CUDA variables …)."""

from __future__ import annotations

import os

# Control-plane settings a child process must not see.
_PRIVATE_PARTS = (
    "DATABASE_URL",
    "BROKER_URL",
    "REDIS_URL",
    "API_KEY",
    "SECRET",
    "PASSWORD",
    "KEYS",
)


def child_environment() -> dict[str, str]:
    """This process's environment minus Conveyor's own secrets (`CONVEYOR_*` URLs, keys)."""
    return {
        key: value
        for key, value in os.environ.items()
        if not (key.startswith("CONVEYOR_") and any(p in key for p in _PRIVATE_PARTS))
    }
