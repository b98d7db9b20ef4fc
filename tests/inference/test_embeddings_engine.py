"""The packaged MiniLM through the embeddings engine: real similarity, batching, usage."""

from __future__ import annotations

import asyncio
import math

from inference.engines.embeddings_engine import SentenceTransformerEngine


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_related_sentences_are_closer_than_unrelated(
    minilm_engine: SentenceTransformerEngine,
) -> None:
    out = asyncio.run(
        minilm_engine.embed(
            [
                "A cat is sleeping on the sofa.",
                "A kitten naps on the couch.",
                "The central bank raised interest rates.",
            ]
        )
    )
    cat, kitten, bank = out.vectors
    assert minilm_engine.dimensions == 384
    assert len(cat) == 384
    assert _cos(cat, kitten) > _cos(cat, bank) + 0.3
    assert abs(math.sqrt(sum(x * x for x in cat)) - 1.0) < 1e-4  # normalised
    assert out.prompt_tokens > 10


def test_concurrent_calls_share_a_batch_and_keep_order(
    minilm_engine: SentenceTransformerEngine,
) -> None:
    texts = [f"sentence number {i}" for i in range(6)]

    async def run() -> list[list[float]]:
        outs = await asyncio.gather(*(minilm_engine.embed([t]) for t in texts))
        return [o.vectors[0] for o in outs]

    single = asyncio.run(minilm_engine.embed(texts[:1])).vectors[0]
    before = minilm_engine.batches_run
    vectors = asyncio.run(run())
    assert minilm_engine.batches_run - before < len(texts)
    assert _cos(vectors[0], single) > 0.9999
    assert _cos(vectors[0], vectors[1]) < 0.9999
