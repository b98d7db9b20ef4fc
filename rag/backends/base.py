"""The chunk index interface, and hybrid search: vector and keyword ranks fused with reciprocal
rank fusion (RRF, k=60), the same code over every backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

RRF_K = 60
Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class IndexedChunk:
    """A chunk as written to the index."""

    text: str
    heading: str
    start: int
    end: int


@dataclass(frozen=True)
class SearchHit:
    chunk_id: int
    dataset_id: str
    file_id: str
    source: str
    heading: str
    text: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Filters:
    dataset_ids: tuple[str, ...]
    source: str | None = None


class ChunkIndex(ABC):
    """Chunks with their vectors (cosine) and their words (full-text), by dataset and file."""

    @abstractmethod
    def replace_file(
        self,
        dataset_id: str,
        file_id: str,
        source: str,
        chunks: Sequence[IndexedChunk],
        vectors: Vector,
    ) -> int:
        """Atomically swap the file's chunks for ``chunks``; return how many were written."""

    @abstractmethod
    def delete_file(self, dataset_id: str, file_id: str) -> int: ...

    @abstractmethod
    def delete_dataset(self, dataset_id: str) -> int: ...

    @abstractmethod
    def count(self, dataset_id: str, file_id: str | None = None) -> int: ...

    @abstractmethod
    def vector_search(self, vector: Vector, filters: Filters, k: int) -> list[SearchHit]:
        """The ``k`` nearest chunks by cosine similarity (score: the similarity)."""

    @abstractmethod
    def keyword_search(self, query: str, filters: Filters, k: int) -> list[SearchHit]:
        """The ``k`` best chunks by full-text rank (BM25 on SQLite, ts_rank on PostgreSQL)."""

    def hybrid_search(
        self, query: str, vector: Vector, filters: Filters, k: int, *, depth: int = 50
    ) -> list[SearchHit]:
        """Reciprocal rank fusion of the vector and keyword rankings (score: the fused score)."""
        ranked = [
            self.vector_search(vector, filters, max(k, depth)),
            self.keyword_search(query, filters, max(k, depth)),
        ]
        return fuse(ranked, k)

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


def fuse(rankings: Sequence[Sequence[SearchHit]], k: int) -> list[SearchHit]:
    scores: dict[int, float] = {}
    hits: dict[int, SearchHit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            hits.setdefault(hit.chunk_id, hit)
    best = sorted(scores, key=lambda cid: (-scores[cid], cid))[:k]
    return [_rescored(hits[cid], scores[cid]) for cid in best]


def _rescored(hit: SearchHit, score: float) -> SearchHit:
    return SearchHit(**{**hit.__dict__, "score": round(score, 6)})


def keyword_terms(query: str) -> list[str]:
    """The query's words, lower-cased, for an OR full-text match (no operator injection)."""
    import re

    return list(dict.fromkeys(w.lower() for w in re.findall(r"\w+", query) if len(w) > 1))
