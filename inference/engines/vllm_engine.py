"""vLLM engine: continuous batching on a GPU behind the common ``ChatEngine`` interface.

Used when ``vllm`` is importable and a GPU is visible. The ``AsyncLLMEngine`` lives in the
worker process (created after fork, so CUDA is initialised in the child only) and batches
every request the process is handling at once. ``vllm`` is imported lazily so this module
imports everywhere.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from inference.engines.base import (
    ChatEngine,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    Usage,
)
from inference.errors import ContextLengthError, EngineUnavailableError, InvalidRequestError
from inference.tools import apply_template

logger = logging.getLogger(__name__)


def vllm_available() -> bool:
    """True when ``vllm`` can be imported and CUDA is usable in this process."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


class VLLMEngine(ChatEngine):
    """Serve one model directory with vLLM's async engine."""

    def __init__(
        self,
        name: str,
        path: str | Path,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        default_max_tokens: int = 256,
    ) -> None:
        super().__init__(name)
        self.path = Path(path)
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.default_max_tokens = default_max_tokens
        self._engine: Any = None
        self._tokenizer: Any = None
        self._context_length = 0

    @property
    def context_length(self) -> int:
        return self._context_length

    async def start(self) -> None:
        if self._engine is not None:
            return
        if importlib.util.find_spec("vllm") is None:
            raise EngineUnavailableError("vllm is not installed in this worker.")
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        args = AsyncEngineArgs(
            model=str(self.path),
            served_model_name=self.name,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
        )
        self._engine = AsyncLLMEngine.from_engine_args(args)
        self._tokenizer = await self._engine.get_tokenizer()
        config = await self._engine.get_model_config()
        self._context_length = int(config.max_model_len)
        logger.info(
            "vLLM loaded %s from %s (tp=%d)", self.name, self.path, args.tensor_parallel_size
        )

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        if self._tokenizer is None:
            raise EngineUnavailableError(f"Model '{self.name}' is not loaded.")
        return apply_template(self._tokenizer, messages, tools)

    def _budget(self, prompt_tokens: int, max_tokens: int | None) -> int:
        room = self._context_length - prompt_tokens
        if max_tokens is None:
            if room < 1:
                raise ContextLengthError(
                    limit=self._context_length, prompt_tokens=prompt_tokens, max_tokens=1
                )
            return min(self.default_max_tokens, room)
        if max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1.", param="max_tokens")
        if max_tokens > room:
            raise ContextLengthError(
                limit=self._context_length, prompt_tokens=prompt_tokens, max_tokens=max_tokens
            )
        return max_tokens

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if self._engine is None:
            raise EngineUnavailableError(f"Model '{self.name}' is not started.")
        from vllm import SamplingParams as VSamplingParams

        params = request.params
        prompt_ids = self._tokenizer.encode(request.prompt)
        sampling = VSamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop) or None,
            max_tokens=self._budget(len(prompt_ids), params.max_tokens),
        )
        sent = [0] * params.n
        done = [False] * params.n
        completion_tokens = [0] * params.n
        finished = False
        try:
            async for output in self._engine.generate(
                {"prompt_token_ids": prompt_ids}, sampling, request.request_id
            ):
                for choice in output.outputs:
                    i = choice.index
                    if done[i]:
                        continue
                    completion_tokens[i] = len(choice.token_ids)
                    reason: FinishReason | None = None
                    if choice.finish_reason is not None:
                        reason = "length" if choice.finish_reason == "length" else "stop"
                        done[i] = True
                    delta = choice.text[sent[i] :]
                    sent[i] = len(choice.text)
                    if delta or reason is not None:
                        yield TextDelta(index=i, text=delta, finish_reason=reason)
            finished = True
            yield Usage(len(prompt_ids), sum(completion_tokens))
        finally:
            if not finished:
                await self._engine.abort(request.request_id)
