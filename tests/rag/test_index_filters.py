"""Filters are part of the search: a dataset (or a file) holding a sliver of the index still
gets its ``k`` nearest chunks, on the embedded index and on PostgreSQL + pgvector (HNSW, from
the ``pgserver`` wheel), whichever way the pgvector index answers it (an exact scan of a
selective filter, a wider ``ef_search``, or an iterative scan on pgvector 0.8+)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from rag.backends import pgvector
from rag.backends.base import ChunkIndex, Filters, IndexedChunk
from rag.backends.embedded import EmbeddedIndex

DIMS = 32
#: "big" in files of 2,000 chunks; "mid" is 5% of the index, "small" 0.1%, a file of "big" 9%.
SIZES = {"big": 20_000, "mid": 1000, "small": 30}
FILE = 2000


def _fill(index: ChunkIndex, rng: np.random.Generator) -> None:
    for dataset, n in SIZES.items():
        for first in range(0, n, FILE):
            count = min(FILE, n - first)
            source = f"{dataset}-{first}.md"
            vectors = rng.standard_normal((count, DIMS)).astype(np.float32)
            chunks = [IndexedChunk(f"chunk {first + i}", "", 0, 1) for i in range(count)]
            index.replace_file(dataset, source, source, chunks, vectors)


def _exact(index: ChunkIndex, query: np.ndarray, flt: Filters, k: int) -> list[int]:
    """The true nearest of the filter's chunks (scores from a search of everything it holds)."""
    hits = index.vector_search(query, flt, 10**6)
    return [h.chunk_id for h in sorted(hits, key=lambda h: -h.score)[:k]]


def _check(index: ChunkIndex, rng: np.random.Generator) -> None:
    for _ in range(5):
        query = rng.standard_normal(DIMS).astype(np.float32)
        for flt in (Filters(("small",)), Filters(("big",), source="big-0.md"), Filters(("mid",))):
            hits = index.vector_search(query, flt, 10)
            assert len(hits) == 10, (flt, len(hits))
            assert all(h.dataset_id in flt.dataset_ids for h in hits)
            assert all(flt.source in (None, h.source) for h in hits)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            if flt.dataset_ids == ("small",):  # an exact scan: exactly the true nearest
                assert [h.chunk_id for h in hits] == _exact(index, query, flt, 10)
        # two datasets together: the union's nearest
        both = index.hybrid_search("chunk", query, Filters(("small", "mid")), 10)
        assert len(both) == 10 and {h.dataset_id for h in both} <= {"small", "mid"}


def test_embedded_filters_before_the_product(tmp_path: object) -> None:
    index = EmbeddedIndex(f"sqlite:///{tmp_path}/index.db")
    rng = np.random.default_rng(5)
    _fill(index, rng)
    assert [index.count(d) for d in SIZES] == list(SIZES.values())
    _check(index, rng)


@pytest.fixture
def pg_index(pgvector_url: str) -> Iterator[pgvector.PgVectorIndex]:
    name = f"filters_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pgvector_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    index = pgvector.PgVectorIndex(pgvector_url.replace("/rag_index?", f"/{name}?"))
    yield index
    index.close()


def test_pgvector_filters_inside_the_search(pg_index: pgvector.PgVectorIndex) -> None:
    """With statistics (autovacuum's ANALYZE), the planner takes HNSW for "mid" and for the
    file of "big": filtered after HNSW's 100 nearest, they got 4 to 6 hits of 10."""
    rng = np.random.default_rng(5)
    _fill(pg_index, rng)
    with psycopg.connect(pg_index.url, autocommit=True) as conn:
        conn.execute("ANALYZE rag_chunks")
    assert pg_index.pgvector_version  # the pgserver wheel's 0.6.2: no iterative scan
    _check(pg_index, rng)
