"""Fixtures for inference tests: a tiny GPT-2 built on disk and the packaged MiniLM, both loaded
through the real engine loading code (no download)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.engines.embeddings_engine import SentenceTransformerEngine, packaged_minilm_path
from inference.engines.transformers_engine import TransformersEngine
from inference.testing import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> Iterator[TransformersEngine]:
    engine = TransformersEngine("tiny", tiny_model_dir, device="cpu", batch_wait_ms=30)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


@pytest.fixture(scope="session")
def minilm_engine() -> Iterator[SentenceTransformerEngine]:
    engine = SentenceTransformerEngine(
        "all-MiniLM-L6-v2", packaged_minilm_path(), device="cpu", batch_wait_ms=30
    )
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())
