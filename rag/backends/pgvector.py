"""The PostgreSQL index: one ``rag_chunks`` table with a pgvector column (an HNSW index with
cosine distance per vector size, as a partial expression index) and a generated ``tsvector``
column with a GIN index for full-text ranking (``ts_rank_cd``)."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import psycopg

from rag.backends.base import ChunkIndex, Filters, IndexedChunk, SearchHit, Vector, keyword_terms

_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS rag_chunks (
    id BIGSERIAL PRIMARY KEY, dataset_id TEXT NOT NULL, file_id TEXT NOT NULL,
    source TEXT NOT NULL, heading TEXT NOT NULL, text TEXT NOT NULL,
    start_char INTEGER NOT NULL, end_char INTEGER NOT NULL, dims INTEGER NOT NULL,
    embedding vector NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', heading || ' ' || text)) STORED
);
CREATE INDEX IF NOT EXISTS ix_rag_chunks_dataset_file ON rag_chunks (dataset_id, file_id);
CREATE INDEX IF NOT EXISTS ix_rag_chunks_tsv ON rag_chunks USING gin (tsv);
"""
_COLUMNS = "id, dataset_id, file_id, source, heading, text, start_char, end_char"
EF_SEARCH = 100
POOL_SIZE = 8


class PgVectorIndex(ChunkIndex):
    def __init__(self, url: str) -> None:
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._dims_ready: set[int] = set()
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7410001)")
            conn.execute(_SCHEMA)

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of this index's pool (kept open for the next caller, any thread)."""
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = psycopg.connect(self.url, autocommit=True)
            conn.execute(f"SET hnsw.ef_search = {EF_SEARCH}")
        try:
            yield conn
        except BaseException:
            conn.close()  # a broken or busy connection is not handed to the next caller
            raise
        if self._idle.qsize() < POOL_SIZE:
            self._idle.put(conn)
        else:
            conn.close()

    def _ensure_dims(self, dims: int) -> None:
        if dims in self._dims_ready:
            return
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7410002)")
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS ix_rag_chunks_hnsw_{dims} ON rag_chunks "
                f"USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WHERE dims = {dims}"
            )
        self._dims_ready.add(dims)

    def replace_file(
        self,
        dataset_id: str,
        file_id: str,
        source: str,
        chunks: Sequence[IndexedChunk],
        vectors: Vector,
    ) -> int:
        vectors = np.asarray(vectors, dtype=np.float32)
        dims = int(vectors.shape[1]) if len(vectors) else 0
        if dims:
            self._ensure_dims(dims)
        with self._conn() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "DELETE FROM rag_chunks WHERE dataset_id = %s AND file_id = %s",
                (dataset_id, file_id),
            )
            if chunks:
                with cur.copy(
                    "COPY rag_chunks (dataset_id, file_id, source, heading, text, start_char, "
                    "end_char, dims, embedding) FROM STDIN"
                ) as copy:
                    for chunk, vector in zip(chunks, vectors, strict=True):
                        copy.write_row(
                            (
                                dataset_id,
                                file_id,
                                source,
                                chunk.heading,
                                chunk.text,
                                chunk.start,
                                chunk.end,
                                dims,
                                _literal(vector),
                            )
                        )
        return len(chunks)

    def _run(self, sql: str, args: Sequence[Any]) -> list[Any]:
        with self._conn() as conn:
            cur = conn.execute(sql, args)
            return cur.fetchall() if cur.description else [cur.rowcount]

    def delete_file(self, dataset_id: str, file_id: str) -> int:
        sql = "DELETE FROM rag_chunks WHERE dataset_id = %s AND file_id = %s"
        return int(self._run(sql, (dataset_id, file_id))[0])

    def delete_dataset(self, dataset_id: str) -> int:
        return int(self._run("DELETE FROM rag_chunks WHERE dataset_id = %s", (dataset_id,))[0])

    def count(self, dataset_id: str, file_id: str | None = None) -> int:
        if file_id is None:
            rows = self._run("SELECT count(*) FROM rag_chunks WHERE dataset_id = %s", (dataset_id,))
        else:
            sql = "SELECT count(*) FROM rag_chunks WHERE dataset_id = %s AND file_id = %s"
            rows = self._run(sql, (dataset_id, file_id))
        return int(rows[0][0])

    def _where(self, filters: Filters) -> tuple[str, list[Any]]:
        sql = "dataset_id = ANY(%s)"
        args: list[Any] = [list(filters.dataset_ids)]
        if filters.source is not None:
            sql += " AND source = %s"
            args.append(filters.source)
        return sql, args

    def vector_search(self, vector: Vector, filters: Filters, k: int) -> list[SearchHit]:
        dims = int(vector.shape[0])
        where, args = self._where(filters)
        rows = self._run(
            f"SELECT {_COLUMNS}, 1 - (embedding::vector({dims}) <=> %s::vector({dims})) "
            f"FROM rag_chunks WHERE dims = {dims} AND {where} "
            f"ORDER BY embedding::vector({dims}) <=> %s::vector({dims}) LIMIT %s",
            [_literal(vector), *args, _literal(vector), k],
        )
        return [_hit(r) for r in rows]

    def keyword_search(self, query: str, filters: Filters, k: int) -> list[SearchHit]:
        terms = keyword_terms(query)
        if not terms:
            return []
        where, args = self._where(filters)
        tsquery = " | ".join(t.replace("'", "") for t in terms)
        rows = self._run(
            f"SELECT {_COLUMNS}, ts_rank_cd(tsv, q) FROM rag_chunks, "
            "to_tsquery('english', %s) q "
            f"WHERE tsv @@ q AND {where} ORDER BY ts_rank_cd(tsv, q) DESC, id LIMIT %s",
            [tsquery, *args, k],
        )
        return [_hit(r) for r in rows]

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()


def _literal(vector: Vector) -> str:
    return "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"


def _hit(row: Sequence[Any]) -> SearchHit:
    cid, dataset_id, file_id, source, heading, text, start, end, score = row
    return SearchHit(
        chunk_id=int(cid),
        dataset_id=dataset_id,
        file_id=file_id,
        source=source,
        heading=heading,
        text=text,
        start=int(start),
        end=int(end),
        score=round(float(score), 6),
    )
