"""Fixtures of the projects tests: a local projects backend in a temporary runtime directory
(installed as this process's backend, so the in-process worker and the API share it), and
cleanup that kills every process it started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def kill_everything(runtime_dir: Path) -> None:
    from deployments.backends.local import process_matches

    for state in runtime_dir.glob("envs/*/state.json"):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(state.read_text())
            for rec in [*data.get("replicas", []), *data.get("proxies", [])]:
                pid, start = rec.get("pid"), rec.get("start_time")
                if pid and start and process_matches(pid, start):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)


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
    runtime.reset_backend()
