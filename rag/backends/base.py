"""The chunk index interface, and hybrid search, the same code over every backend.

Hybrid search takes a deep candidate list from each half (``max(4 * k, 50)``) and fuses them by
relative score fusion, as Weaviate does by default (``relativeScoreFusion``; Elastic's and
OpenSearch's "linear" combination of normalised scores): each half's scores are normalised to
[0, 1] over its own candidates and a chunk's score is ``alpha * vector + (1 - alpha) * keyword``
(absent from a half: 0 there), ``alpha`` = 0.75 like Weaviate's default. The vector half is
min-max normalised; the keyword half is divided by its best score, since a full-text score of 0
means "no term shared" (min-max would stretch near-equal BM25 scores, which differ only by
chunk length, over the whole [0, 1]). Unlike rank fusion, keyword candidates that tie add the
same amount to each and leave the vector order alone, while a rare exact term that only one
chunk holds lifts that chunk. Reciprocal rank fusion (k=60) stays available (``fusion="rrf"``).

The keyword half's cost is bounded whatever the corpus, like Lucene's ``cutoff_frequency``
(common-terms query): a query term held by more than ``MAX_TERM_CHUNKS`` chunks is *common*
and left out of the full-text match, so at most ``terms * MAX_TERM_CHUNKS`` chunks are ranked
(BM25 over every chunk holding "water" is what made hybrid search ten times the vector half). A
query of only common terms has no keyword half: its words say little about which chunk is
meant, and the vector half carries the search.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

RRF_K = 60
ALPHA = 0.75  # the vector half's weight in relative score fusion (Weaviate's default)
DEPTH = 50  # the least candidates taken from each half before fusing
#: a term held by more chunks than this is common: not matched, so not ranked (bounded cost)
MAX_TERM_CHUNKS = 1000
Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class IndexedChunk:
    """A chunk as written to the index."""

    text: str
    heading: str
    start: int
    end: int


def chunk_row(
    dataset_id: str, file_id: str, source: str, chunk: IndexedChunk
) -> tuple[str, str, str, str, str, int, int]:
    """The leading columns of a chunk's row, in the order both indexes store them."""
    return (dataset_id, file_id, source, chunk.heading, chunk.text, chunk.start, chunk.end)


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


class SearchIndex(ABC):
    """What a search needs: nearest vectors (cosine) and a full-text ranking, fused."""

    @abstractmethod
    def vector_search(self, vector: Vector, filters: Filters, k: int) -> list[SearchHit]:
        """The ``k`` nearest chunks by cosine similarity (score: the similarity)."""

    @abstractmethod
    def keyword_search(self, query: str, filters: Filters, k: int) -> list[SearchHit]:
        """The ``k`` best chunks by full-text rank (BM25 on SQLite, ts_rank on PostgreSQL)."""

    def hybrid_search(
        self,
        query: str,
        vector: Vector,
        filters: Filters,
        k: int,
        *,
        fusion: str = "relative_score",
        alpha: float = ALPHA,
    ) -> list[SearchHit]:
        """The vector and keyword candidates fused (score: the fused score)."""
        depth = max(4 * k, DEPTH)
        semantic = self.vector_search(vector, filters, depth)
        lexical = self.keyword_search(query, filters, depth)
        if fusion == "rrf":
            return fuse([semantic, lexical], k)
        return fuse_scores([(semantic, alpha, False), (lexical, 1.0 - alpha, True)], k)

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


class ChunkIndex(SearchIndex):
    """Chunks with their vectors (cosine) and their words (full-text), by dataset and file."""

    max_term_chunks: int = MAX_TERM_CHUNKS

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


def fuse(rankings: Sequence[Sequence[SearchHit]], k: int) -> list[SearchHit]:
    scores: dict[int, float] = {}
    hits: dict[int, SearchHit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            hits.setdefault(hit.chunk_id, hit)
    best = sorted(scores, key=lambda cid: (-scores[cid], cid))[:k]
    return [_rescored(hits[cid], scores[cid]) for cid in best]


def fuse_scores(
    weighted: Sequence[tuple[Sequence[SearchHit], float, bool]], k: int
) -> list[SearchHit]:
    """Relative score fusion: each ranking's scores normalised to [0, 1] (min-max, or divided by
    the best one when ``from_zero``: a score whose zero means "no match"), summed by weight."""
    scores: dict[int, float] = {}
    hits: dict[int, SearchHit] = {}
    for ranking, weight, from_zero in weighted:
        if not ranking:
            continue
        low = 0.0 if from_zero else min(h.score for h in ranking)
        spread = max(h.score for h in ranking) - low
        for hit in ranking:
            norm = (hit.score - low) / spread if spread > 1e-12 else 1.0
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weight * norm
            hits.setdefault(hit.chunk_id, hit)
    best = sorted(scores, key=lambda cid: (-scores[cid], cid))[:k]
    return [_rescored(hits[cid], scores[cid]) for cid in best]


def _rescored(hit: SearchHit, score: float) -> SearchHit:
    return SearchHit(**{**hit.__dict__, "score": round(score, 6)})


#: Lucene's English stop set plus question words: they match nearly every chunk, so an OR query
#: over them only adds noise to the keyword ranking (PostgreSQL's ``english`` config drops its own).
_STOP = (
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with what which who whom whose how when where why do does "
    "did can could should would i me my we our you your he she his her its them about from"
)
STOP_WORDS = frozenset(_STOP.split(" "))


def keyword_terms(query: str) -> list[str]:
    """The query's words, lower-cased, stop words left out, for an OR full-text match (no
    operator injection); all stop words → all the words (a query of only common words)."""
    words = [w.lower() for w in re.findall(r"\w+", query) if len(w) > 1]
    kept = [w for w in words if w not in STOP_WORDS] or words
    return list(dict.fromkeys(kept))
