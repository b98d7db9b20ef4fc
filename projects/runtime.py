"""The projects backend this process uses (``CONVEYOR_PROJECTS_BACKEND``), one per process."""

from __future__ import annotations

import importlib
from pathlib import Path

from common.process import ProcessResource
from config.environment import child_environment
from config.settings import Settings, get_settings
from projects.backends.base import Backend
from projects.backends.local import LocalProjectsBackend, LocalProjectsConfig

#: A backend set here directly (tests) wins over ``BACKEND``'s.
_backend: Backend | None = None


def runtime_dir(settings: Settings) -> Path:
    return settings.projects_runtime_dir or (settings.data_dir / "projects")


def local_config(settings: Settings) -> LocalProjectsConfig:
    return LocalProjectsConfig(
        runtime_dir=runtime_dir(settings),
        drain_s=settings.projects_drain_seconds,
        backoff_base_s=settings.projects_backoff_base_seconds,
        backoff_max_s=settings.projects_backoff_max_seconds,
        base_env=child_environment(),
    )


def build_backend(settings: Settings) -> Backend:
    if settings.projects_backend == "kubernetes":
        module = importlib.import_module("projects.backends.kubernetes")
        backend: Backend = module.build_backend(settings)
        return backend
    return LocalProjectsBackend(local_config(settings))


BACKEND: ProcessResource[Backend] = ProcessResource(
    "projects backend", lambda: build_backend(get_settings()), lambda b: b.close()
)


def get_backend() -> Backend:
    return _backend if _backend is not None else BACKEND.get()


def reset_backend() -> None:
    global _backend
    _backend = None
    BACKEND.close()
