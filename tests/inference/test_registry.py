"""Model registry (CONVEYOR_MODELS parsing, kind detection) and engine choice."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from inference.engines import EngineOptions, create_engine
from inference.engines.embeddings_engine import SentenceTransformerEngine, packaged_minilm_path
from inference.engines.transformers_engine import TransformersEngine
from inference.engines.vllm_engine import VLLMEngine, vllm_available
from inference.errors import EngineUnavailableError, InvalidRequestError, ModelNotFoundError
from inference.registry import ModelPool, configured_models, detect_kind, parse_models


def test_parse_models_and_detect_kinds(tiny_model_dir: Path) -> None:
    minilm = packaged_minilm_path()
    specs = parse_models(f" chat = {tiny_model_dir} , emb={minilm},")
    assert [(s.name, s.path, s.kind) for s in specs] == [
        ("chat", tiny_model_dir, "chat"),
        ("emb", minilm, "embedding"),
    ]
    assert detect_kind(tiny_model_dir) == "chat"
    with pytest.raises(ValueError, match="name=path"):
        parse_models("just-a-path")
    with pytest.raises(ValueError, match="repeat"):
        parse_models(f"a={tiny_model_dir},a={tiny_model_dir}")


def test_default_embedding_model_is_added_unless_disabled(tiny_model_dir: Path) -> None:
    names = [s.name for s in configured_models(f"tiny={tiny_model_dir}")]
    assert names == ["tiny", "all-MiniLM-L6-v2"]
    alone = configured_models(f"tiny={tiny_model_dir}", default_embedding=False)
    assert [s.name for s in alone] == ["tiny"]


def test_engine_choice_without_vllm(tiny_model_dir: Path) -> None:
    spec = parse_models(f"tiny={tiny_model_dir}")[0]
    embedding = configured_models("")[0]
    assert isinstance(create_engine(spec, EngineOptions()), TransformersEngine)
    assert isinstance(create_engine(embedding, EngineOptions()), SentenceTransformerEngine)
    forced = create_engine(spec, EngineOptions(engine="vllm", tensor_parallel_size=2))
    assert isinstance(forced, VLLMEngine)
    assert forced.tensor_parallel_size == 2
    if importlib.util.find_spec("vllm") is None:
        assert not vllm_available()
        with pytest.raises(EngineUnavailableError, match="vllm is not installed"):
            asyncio.run(forced.start())


def test_pool_lookups(tiny_engine: TransformersEngine) -> None:
    pool = ModelPool([tiny_engine])
    assert pool.chat("tiny") is tiny_engine
    with pytest.raises(ModelNotFoundError) as missing:
        pool.chat("nope")
    assert missing.value.status_code == 404
    assert missing.value.to_error_object("req_1")["type"] == "invalid_request_error"
    with pytest.raises(InvalidRequestError):
        pool.embedding("tiny")
