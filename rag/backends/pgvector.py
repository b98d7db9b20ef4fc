"""The PostgreSQL index: one ``rag_chunks`` table with a pgvector column (an HNSW index with
cosine distance per vector size, as a partial expression index) and a generated ``tsvector``
column with a GIN index for full-text ranking (``ts_rank_cd``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
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


class PgVectorIndex(ChunkIndex):
    def __init__(self, url: str) -> None:
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._local = threading.local()
        self._dims_ready: set[int] = set()
        with self._conn().transaction():
            self._conn().execute("SELECT pg_advisory_xact_lock(7410001)")
            self._conn().execute(_SCHEMA)

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.url, autocommit=True)
            conn.execute(f"SET hnsw.ef_search = {EF_SEARCH}")
            self._local.conn = conn
        return conn

    def _ensure_dims(self, dims: int) -> None:
        if dims in self._dims_ready:
            return
        with self._conn().transaction():
            self._conn().execute("SELECT pg_advisory_xact_lock(7410002)")
            self._conn().execute(
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
        conn = self._conn()
        with conn.transaction(), conn.cursor() as cur:
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

    def delete_file(self, dataset_id: str, file_id: str) -> int:
        cur = self._conn().execute(
            "DELETE FROM rag_chunks WHERE dataset_id = %s AND file_id = %s", (dataset_id, file_id)
        )
        return cur.rowcount

    def delete_dataset(self, dataset_id: str) -> int:
        cur = self._conn().execute("DELETE FROM rag_chunks WHERE dataset_id = %s", (dataset_id,))
        return cur.rowcount

    def count(self, dataset_id: str, file_id: str | None = None) -> int:
        if file_id is None:
            row = (
                self._conn()
                .execute("SELECT count(*) FROM rag_chunks WHERE dataset_id = %s", (dataset_id,))
                .fetchone()
            )
        else:
            row = (
                self._conn()
                .execute(
                    "SELECT count(*) FROM rag_chunks WHERE dataset_id = %s AND file_id = %s",
                    (dataset_id, file_id),
                )
                .fetchone()
            )
        return int(row[0]) if row else 0

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
        rows = (
            self._conn()
            .execute(
                f"SELECT {_COLUMNS}, 1 - (embedding::vector({dims}) <=> %s::vector({dims})) "
                f"FROM rag_chunks WHERE dims = {dims} AND {where} "
                f"ORDER BY embedding::vector({dims}) <=> %s::vector({dims}) LIMIT %s",
                [_literal(vector), *args, _literal(vector), k],
            )
            .fetchall()
        )
        return [_hit(r) for r in rows]

    def keyword_search(self, query: str, filters: Filters, k: int) -> list[SearchHit]:
        terms = keyword_terms(query)
        if not terms:
            return []
        where, args = self._where(filters)
        tsquery = " | ".join(t.replace("'", "") for t in terms)
        rows = (
            self._conn()
            .execute(
                f"SELECT {_COLUMNS}, ts_rank_cd(tsv, q) FROM rag_chunks, "
                "to_tsquery('english', %s) q "
                f"WHERE tsv @@ q AND {where} ORDER BY ts_rank_cd(tsv, q) DESC, id LIMIT %s",
                [tsquery, *args, k],
            )
            .fetchall()
        )
        return [_hit(r) for r in rows]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


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
