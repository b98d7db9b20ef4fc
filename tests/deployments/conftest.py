"""Fixtures of the deployments tests: a local backend installed as this process's backend."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

STUB = str(Path(__file__).with_name("stub_server.py"))


def install_backend(tmp_path: Path, command: list[str] | None, **options: Any) -> Any:
    from deployments import runtime
    from deployments.backends.local import LocalBackend, LocalBackendConfig

    values: dict[str, Any] = {
        "stop_grace_s": 5.0,
        "backoff_base_s": 0.2,
        "backoff_max_s": 1.0,
        "orphan_grace_s": 0.0,
        "startup_timeout_s": 120.0,
        "base_env": runtime.replica_base_env(),
    }
    values.update(options)
    backend = LocalBackend(
        LocalBackendConfig(runtime_dir=tmp_path / "rt", command=command, **values)
    )
    runtime.reset_backend()
    runtime._backend = backend
    return backend


@pytest.fixture
def deploy_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Settings for fast deploy jobs; the catalogue lists `tiny` (and `tiny-b`)."""
    from config import get_settings

    settings = get_settings()
    monkeypatch.setattr(settings, "models", f"tiny={tmp_path}/tiny,tiny-b={tmp_path}/tiny-b")
    monkeypatch.setattr(settings, "deploy_poll_seconds", 0.1)
    monkeypatch.setattr(settings, "deploy_backend", "local")
    return settings


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test model (built here, no download) that real model-server replicas serve."""
    from inference.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def stub_backend(deploy_settings: Any, tmp_path: Path) -> Iterator[Any]:
    """Replicas are the stdlib stand-in server (fast); every process is killed afterwards."""
    from deployments import runtime

    backend = install_backend(
        tmp_path, [sys.executable, STUB, "--port", "{port}", "--name", "{name}"]
    )
    yield backend
    backend.sweep_orphans(set())
    runtime.reset_backend()
