"""Inference engines behind one async interface: vLLM (GPU), transformers, embeddings."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from config import Settings, default
from inference.engines.base import (
    ChatEngine,
    Completion,
    EmbeddingEngine,
    EmbeddingOutput,
    Engine,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    Usage,
    sampling_from,
)

if TYPE_CHECKING:
    from inference.registry import ModelSpec

__all__ = [
    "ChatEngine",
    "Completion",
    "EmbeddingEngine",
    "EmbeddingOutput",
    "Engine",
    "EngineOptions",
    "GenerationEvent",
    "GenerationRequest",
    "SamplingParams",
    "TextDelta",
    "Usage",
    "create_engine",
    "sampling_from",
]


@dataclass(frozen=True)
class EngineOptions:
    """How engines are built in this process: the ``inference_*`` settings narrowed, with the
    settings' own defaults."""

    engine: Literal["auto", "transformers", "vllm"] = default("inference_engine")
    device: str = default("inference_device")
    max_batch_size: int = default("inference_max_batch_size")
    batch_wait_ms: float = default("inference_batch_wait_ms")
    default_max_tokens: int = default("inference_default_max_tokens")
    tensor_parallel_size: int = default("inference_tensor_parallel_size")
    cpu_threads: int = default("inference_cpu_threads")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> EngineOptions:
        """Field ``x`` is setting ``inference_x``; ``overrides`` win (e.g. command-line flags)."""
        values = {f.name: getattr(settings, f"inference_{f.name}") for f in fields(cls)}
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


def create_engine(spec: ModelSpec, options: EngineOptions | None = None) -> Engine:
    """Build (not start) the engine for one model: vLLM when asked for or available on a GPU."""
    from inference.engines.embeddings_engine import SentenceTransformerEngine
    from inference.engines.transformers_engine import TransformersEngine
    from inference.engines.vllm_engine import VLLMEngine, vllm_available

    opts = options or EngineOptions()
    if spec.kind == "embedding":
        return SentenceTransformerEngine(
            spec.name,
            spec.path,
            device=opts.device,
            batch_wait_ms=opts.batch_wait_ms,
            cpu_threads=opts.cpu_threads,
        )
    if opts.engine == "vllm" or (opts.engine == "auto" and vllm_available()):
        return VLLMEngine(
            spec.name,
            spec.path,
            tensor_parallel_size=opts.tensor_parallel_size,
            default_max_tokens=opts.default_max_tokens,
        )
    return TransformersEngine(
        spec.name,
        spec.path,
        device=opts.device,
        max_batch_size=opts.max_batch_size,
        batch_wait_ms=opts.batch_wait_ms,
        default_max_tokens=opts.default_max_tokens,
        cpu_threads=opts.cpu_threads,
    )
