"""Inference engines behind one async interface: vLLM (GPU), transformers, embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

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
    """How engines are built in this process (filled from settings by the caller)."""

    engine: Literal["auto", "transformers", "vllm"] = "auto"
    device: str = "auto"
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    default_max_tokens: int = 256
    tensor_parallel_size: int = 1


def create_engine(spec: ModelSpec, options: EngineOptions | None = None) -> Engine:
    """Build (not start) the engine for one model: vLLM when asked for or available on a GPU."""
    from inference.engines.embeddings_engine import SentenceTransformerEngine
    from inference.engines.transformers_engine import TransformersEngine
    from inference.engines.vllm_engine import VLLMEngine, vllm_available

    opts = options or EngineOptions()
    if spec.kind == "embedding":
        return SentenceTransformerEngine(
            spec.name, spec.path, device=opts.device, batch_wait_ms=opts.batch_wait_ms
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
    )
