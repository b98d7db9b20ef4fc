"""The ingest worker's embedding engines: the inference package's own engines
(``inference.engines.create_engine`` over ``inference.registry``'s configured models, the
packaged MiniLM by default), one per model per worker process, started on one event loop thread
and shared by every ingest task of the process, so concurrent chunks batch together. Loaded by
the worker's start-up hook (``workers.lifecycle``), never per request."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.errors import ErrorCode, JobFailed
from common.process import ProcessResource
from config import get_settings
from inference.engines import EngineOptions, create_engine
from inference.engines.base import EmbeddingEngine
from inference.registry import configured_models
from rag.backends.base import Vector

#: Texts sent to the engine per call (it batches calls together up to its own capacity).
BATCH_TEXTS = 64


class Embedder:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="rag-embed", daemon=True)
        self._thread.start()
        self._engines: dict[str, EmbeddingEngine] = {}
        self._lock = threading.RLock()
        self._tokenizers: dict[str, Any] = {}

    def engine(self, model: str) -> EmbeddingEngine:
        with self._lock:
            found = self._engines.get(model)
            if found is not None:
                return found
            settings = get_settings()
            specs = {
                s.name: s
                for s in configured_models(
                    settings.models, default_embedding=settings.inference_default_embedding
                )
            }
            spec = specs.get(model)
            if spec is None or spec.kind != "embedding":
                served = sorted(n for n, s in specs.items() if s.kind == "embedding")
                raise JobFailed(
                    f"The embedding model {model!r} is not served here; served: {served}.",
                    code=ErrorCode.MODEL_NOT_FOUND,
                )
            engine = create_engine(spec, EngineOptions.from_settings(settings))
            assert isinstance(engine, EmbeddingEngine)
            asyncio.run_coroutine_threadsafe(engine.start(), self.loop).result()
            self._engines[model] = engine
            return engine

    def token_spans(self, model: str, text: str) -> list[tuple[int, int]]:
        """Character spans of the model tokenizer's tokens of ``text`` (no special tokens).

        A copy of the engine's tokenizer, behind a lock: a fast (Rust) tokenizer used from two
        threads at once fails ("Already borrowed"), and the engine's batch thread uses its own."""
        with self._lock:
            tokenizer = self._tokenizers.get(model)
            if tokenizer is None:
                engine: Any = self.engine(model)
                tokenizer = copy.deepcopy(engine._model.tokenizer)
                self._tokenizers[model] = tokenizer
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in encoded["offset_mapping"] if b > a]

    def max_tokens(self, model: str) -> int:
        engine: Any = self.engine(model)  # the sentence-transformers engine knows its limit
        return int(getattr(engine, "max_input_tokens", 0)) or 512

    def embed(self, model: str, texts: Sequence[str]) -> tuple[Vector, int]:
        """Vectors of ``texts`` (rows) and the prompt tokens they cost."""
        engine = self.engine(model)

        async def run() -> list[Any]:
            calls = [
                engine.embed(list(texts[i : i + BATCH_TEXTS]))
                for i in range(0, len(texts), BATCH_TEXTS)
            ]
            return list(await asyncio.gather(*calls))

        outputs = asyncio.run_coroutine_threadsafe(run(), self.loop).result()
        vectors = [v for out in outputs for v in out.vectors]
        tokens = sum(int(out.prompt_tokens) for out in outputs)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1), tokens

    def close(self) -> None:
        for engine in list(self._engines.values()):
            asyncio.run_coroutine_threadsafe(engine.close(), self.loop).result(timeout=30)
        self._engines.clear()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


#: This process's engines (each model loads on its first ingest, once per process).
EMBEDDER: ProcessResource[Embedder] = ProcessResource("rag-embedder", Embedder, Embedder.close)
