"""The keyword half ranks only the query's rare terms (held by at most ``max_term_chunks``
chunks, like Lucene's ``cutoff_frequency``), on the embedded index and on PostgreSQL; the term
counts follow the chunks as files are replaced and deleted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from rag.backends.base import ChunkIndex, Filters, IndexedChunk
from rag.backends.embedded import EmbeddedIndex
from rag.backends.pgvector import PgVectorIndex

FLT = Filters(("docs",))


def _file(index: ChunkIndex, file_id: str, texts: list[str]) -> None:
    vectors = np.random.default_rng(len(texts)).standard_normal((len(texts), 8))
    chunks = [IndexedChunk(t, "", 0, len(t)) for t in texts]
    index.replace_file("docs", file_id, file_id, chunks, vectors.astype(np.float32))


def _check(index: ChunkIndex) -> None:
    index.max_term_chunks = 10
    # "garden" in 12 chunks: common; "zinnia" in one, "tulip" in ten: rare
    _file(index, "a", [f"garden bed {i} tulip" for i in range(10)])
    _file(index, "b", ["garden zinnia", "garden path"])
    assert index.keyword_search("garden", FLT, 20) == []  # only common terms: no keyword half
    hits = index.keyword_search("garden zinnia", FLT, 20)
    assert [h.text for h in hits] == ["garden zinnia"]  # not the 11 chunks with only "garden"
    assert len(index.keyword_search("gardens tulips", FLT, 20)) == 10  # stemmed like the index
    _file(index, "c", ["tulip field"])  # "tulip" in 11 chunks now: common
    assert index.keyword_search("tulip", FLT, 20) == []
    index.delete_file("docs", "c")
    assert len(index.keyword_search("tulip", FLT, 20)) == 10
    _file(index, "a", [f"garden bed {i}" for i in range(3)])  # replaced: "garden" in 5 chunks
    assert len(index.keyword_search("garden", FLT, 20)) == 5
    assert index.keyword_search("tulip", FLT, 20) == []  # gone with the old chunks
    index.max_term_chunks = 1000
    assert len(index.keyword_search("garden bed", FLT, 20)) == 5
    hybrid = index.hybrid_search("garden", np.ones(8, dtype=np.float32), FLT, 3)
    assert len(hybrid) == 3


def test_embedded_ranks_only_rare_terms(tmp_path: Path) -> None:
    index = EmbeddedIndex(f"sqlite:///{tmp_path}/index.db")
    _check(index)
    index.max_term_chunks = 4
    assert len(index.hybrid_search("garden", np.ones(8, dtype=np.float32), FLT, 3)) == 3


@pytest.fixture
def pg_index(pgvector_url: str) -> Iterator[PgVectorIndex]:
    name = f"terms_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pgvector_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    index = PgVectorIndex(pgvector_url.replace("/rag_index?", f"/{name}?"))
    yield index
    index.close()


def test_pgvector_ranks_only_rare_terms(pg_index: PgVectorIndex) -> None:
    _check(pg_index)
    with psycopg.connect(pg_index.url, autocommit=True) as conn:
        counts: dict[str, int] = dict(
            conn.execute("SELECT term, chunks FROM rag_terms WHERE dataset_id = 'docs'").fetchall()
        )
        assert counts == {"garden": 5, "bed": 3, "0": 1, "1": 1, "2": 1, "zinnia": 1, "path": 1}
        pg_index.count_terms("docs")  # a recount from the chunks gives the same
        recount = conn.execute("SELECT term, chunks FROM rag_terms WHERE dataset_id = 'docs'")
        assert dict(recount.fetchall()) == counts
    pg_index.delete_dataset("docs")
    with psycopg.connect(pg_index.url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM rag_terms").fetchone() == (0,)
