"""Fixtures of the projects tests: a local projects backend in a temporary runtime directory
(installed as this process's backend, so the in-process worker and the API share it), and
cleanup that kills every process it started."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from projects.testing import kill_everything


@pytest.fixture
def projects_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from config import get_settings
    from projects import runtime
    from projects.backends.local import LocalProjectsBackend

    settings = get_settings()
    rt = tmp_path / "rt"
    monkeypatch.setattr(settings, "projects_runtime_dir", rt)
    monkeypatch.setattr(settings, "projects_drain_seconds", 0.5)
    monkeypatch.setattr(settings, "projects_backoff_base_seconds", 0.2)
    monkeypatch.setattr(settings, "projects_backoff_max_seconds", 1.0)
    monkeypatch.setattr(settings, "projects_rollout_timeout_seconds", 20.0)
    runtime.reset_backend()
    backend = LocalProjectsBackend(runtime.local_config(settings))
    runtime._backend = backend
    yield backend
    kill_everything(rt)
    kill_everything(settings.data_dir / "projects")  # a job run by a leftover message
    runtime.reset_backend()
