"""The catalogue of deployable models (`GET /v1/models/templates`), from `CONVEYOR_MODELS`."""

from __future__ import annotations

import json
from pathlib import Path

from config.settings import Settings
from deployments.backends.local import gpu_present, vllm_available
from deployments.schemas import ModelTemplate
from inference.registry import parse_models


def _context_length(path: Path) -> int | None:
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def default_runtime(settings: Settings) -> str:
    """vLLM where it can run (Kubernetes, or a local GPU with vLLM), else transformers."""
    if settings.deploy_backend == "kubernetes" or (vllm_available() and gpu_present()):
        return "vllm"
    return "transformers"


def templates(settings: Settings) -> list[ModelTemplate]:
    runtime = default_runtime(settings)
    gpu_type = settings.deploy_default_gpu_type or None
    gpu_count = 1 if runtime == "vllm" else 0
    return [
        ModelTemplate(
            name=spec.name,
            source=str(spec.path),
            runtime=runtime,  # type: ignore[arg-type]
            default_gpu_type=gpu_type if gpu_count else None,
            default_gpu_count=gpu_count,
            context_length=_context_length(spec.path),
        )
        for spec in parse_models(settings.models)
        if spec.kind == "chat"
    ]


def find_template(settings: Settings, name: str) -> ModelTemplate | None:
    return next((t for t in templates(settings) if t.name == name), None)
