"""The PostgreSQL index: one ``rag_chunks`` table with a pgvector column (an HNSW index with
cosine distance per vector size, as a partial expression index) and a generated ``tsvector``
column with a GIN index for full-text ranking (``ts_rank_cd``).

Filters (the endpoint's datasets, a ``source``) are part of the search, never applied to HNSW's
answer afterwards (which keeps only the ``ef_search`` nearest of the whole index, so a dataset
holding 1% of the chunks would get about one hit of ten). With pgvector 0.8 or later the HNSW
scan is iterative (``hnsw.iterative_scan = relaxed_order``): it goes on until ``k`` rows pass the
WHERE. Before 0.8, the filter's share of the index decides: a selective filter over at most
``EXACT_LIMIT`` chunks is an exact scan of those chunks (their B-tree, then the distances), a
wider one raises ``hnsw.ef_search`` for that query so about ``2 * k`` candidates pass; an HNSW
answer short of ``k`` is redone exactly.

Full text ranks only the query's rare lexemes (``MAX_TERM_CHUNKS`` in ``base``): ``rag_terms``
holds each dataset's lexemes with the number of chunks holding them, kept in the transaction
that writes or deletes the chunks (``ts_stat`` over the file's rows only), so a search reads a
few primary-key rows instead of counting a lexeme's chunks (``ts_stat`` over a dataset at
search time costs as much as the ranking it would save).
"""

from __future__ import annotations

import contextlib
import math
import queue
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import psycopg

from rag.backends.base import (
    ChunkIndex,
    Filters,
    IndexedChunk,
    SearchHit,
    Vector,
    chunk_row,
    keyword_terms,
)

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
CREATE TABLE IF NOT EXISTS rag_terms (
    dataset_id TEXT NOT NULL, term TEXT NOT NULL, chunks INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, term)
);
"""
#: add (sign 1) or take away (-1) the lexemes of the rows matching the WHERE (format's %L
#: quotes its values into ts_stat's query text); in lexeme order, so that concurrent writers to
#: one dataset wait for each other rather than deadlock
_COUNT_TERMS = """
INSERT INTO rag_terms (dataset_id, term, chunks)
SELECT %(dataset)s::text, word, %(sign)s::int * ndoc FROM ts_stat(format(
    'SELECT tsv FROM rag_chunks WHERE dataset_id = %%L AND file_id = %%L',
    %(dataset)s::text, %(file)s::text
)) ORDER BY word
ON CONFLICT (dataset_id, term) DO UPDATE SET chunks = rag_terms.chunks + EXCLUDED.chunks
"""
_COLUMNS = "id, dataset_id, file_id, source, heading, text, start_char, end_char"
EF_SEARCH = 100
EF_SEARCH_MAX = 1000  # pgvector's limit
EXACT_LIMIT = 20_000  # a filter over at most this many chunks may be scanned exactly
POOL_SIZE = 8
SHARE_TTL_SECONDS = 10.0


class PgVectorIndex(ChunkIndex):
    def __init__(self, url: str) -> None:
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._dims_ready: set[int] = set()
        self._shares: dict[tuple[str, str], tuple[float, int, float]] = {}
        self.iterative_scan = False
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7410001)")
            conn.execute(_SCHEMA)
        with self._conn() as conn:
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            found = row.fetchone()
        self.pgvector_version = str(found[0]) if found else "0"
        self.iterative_scan = _version(self.pgvector_version) >= (0, 8)
        if self.iterative_scan:
            self.close()  # the pool's connections were opened before the setting applied

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of this index's pool (kept open for the next caller, any thread)."""
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = psycopg.connect(self.url, autocommit=True)
            conn.execute(f"SET hnsw.ef_search = {EF_SEARCH}")
            if self.iterative_scan:
                conn.execute("SET hnsw.iterative_scan = relaxed_order")
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
            self._drop_file(cur, dataset_id, file_id)
            if chunks:
                with cur.copy(
                    "COPY rag_chunks (dataset_id, file_id, source, heading, text, start_char, "
                    "end_char, dims, embedding) FROM STDIN"
                ) as copy:
                    for chunk, vector in zip(chunks, vectors, strict=True):
                        row = chunk_row(dataset_id, file_id, source, chunk)
                        copy.write_row((*row, dims, _literal(vector)))
                cur.execute(_COUNT_TERMS, {"dataset": dataset_id, "file": file_id, "sign": 1})
        return len(chunks)

    def _drop_file(self, cur: psycopg.Cursor[Any], dataset_id: str, file_id: str) -> int:
        """Delete a file's chunks and take their lexemes off the dataset's term counts."""
        cur.execute(_COUNT_TERMS, {"dataset": dataset_id, "file": file_id, "sign": -1})
        if cur.rowcount:
            cur.execute(
                "DELETE FROM rag_terms WHERE dataset_id = %s AND chunks <= 0", (dataset_id,)
            )
        cur.execute(
            "DELETE FROM rag_chunks WHERE dataset_id = %s AND file_id = %s", (dataset_id, file_id)
        )
        return cur.rowcount

    def count_terms(self, dataset_id: str) -> None:
        """Recount a dataset's lexemes from its chunks (after rows were bulk-loaded by COPY
        straight into ``rag_chunks``, as the benchmark does)."""
        with self._conn() as conn, conn.transaction():
            conn.execute("DELETE FROM rag_terms WHERE dataset_id = %s", (dataset_id,))
            conn.execute(
                "INSERT INTO rag_terms (dataset_id, term, chunks) "
                "SELECT %(dataset)s::text, word, ndoc FROM ts_stat(format("
                "'SELECT tsv FROM rag_chunks WHERE dataset_id = %%L', %(dataset)s::text))",
                {"dataset": dataset_id},
            )

    def _run(self, sql: str, args: Sequence[Any]) -> list[Any]:
        with self._conn() as conn:
            cur = conn.execute(sql, args)
            return cur.fetchall() if cur.description else [cur.rowcount]

    def delete_file(self, dataset_id: str, file_id: str) -> int:
        with self._conn() as conn, conn.transaction(), conn.cursor() as cur:
            return self._drop_file(cur, dataset_id, file_id)

    def delete_dataset(self, dataset_id: str) -> int:
        with self._conn() as conn, conn.transaction():
            conn.execute("DELETE FROM rag_terms WHERE dataset_id = %s", (dataset_id,))
            cur = conn.execute("DELETE FROM rag_chunks WHERE dataset_id = %s", (dataset_id,))
            return cur.rowcount

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
        where = f"dims = {dims} AND {where}"
        distance = f"embedding::vector({dims}) <=> %s::vector({dims})"
        literal = _literal(vector)
        with self._conn() as conn:
            matching, share = self._share(conn, dims, where, args)
            rows: list[Any] = []
            if self.iterative_scan or share * EF_SEARCH_MAX >= 2 * k or matching > EXACT_LIMIT:
                ef = EF_SEARCH if self.iterative_scan else _ef_search(k, share)
                with conn.transaction():
                    conn.execute(f"SET LOCAL hnsw.ef_search = {ef}")
                    rows = conn.execute(
                        f"SELECT {_COLUMNS}, 1 - ({distance}) FROM rag_chunks WHERE {where} "
                        f"ORDER BY {distance} LIMIT %s",
                        [literal, *args, literal, k],
                    ).fetchall()
            if len(rows) < min(k, matching):  # a selective filter, or HNSW came back short
                rows = conn.execute(
                    f"WITH c AS MATERIALIZED (SELECT {_COLUMNS}, {distance} AS d FROM rag_chunks "
                    f"WHERE {where}) SELECT {_COLUMNS}, 1 - d FROM c ORDER BY d LIMIT %s",
                    [literal, *args, k],
                ).fetchall()
        hits = [_hit(r) for r in rows]
        hits.sort(key=lambda h: (-h.score, h.chunk_id))  # relaxed_order may swap neighbours
        return hits

    def _share(
        self, conn: psycopg.Connection[Any], dims: int, where: str, args: list[Any]
    ) -> tuple[int, float]:
        """How many chunks the filter keeps and its share of the index's chunks of this size
        (each counted up to ``EXACT_LIMIT + 1``, the planner's row estimates past that: a
        capped count would make a whole-index filter look like a sliver and raise
        ``ef_search``), remembered for ``SHARE_TTL_SECONDS`` (it only picks the plan: a short
        HNSW answer is redone exactly)."""
        key = (where, repr(args))
        now = time.monotonic()
        known = self._shares.get(key)
        if known is not None and now - known[0] < SHARE_TTL_SECONDS:
            return known[1], known[2]
        matching, share = self._count_share(conn, dims, where, args)
        if len(self._shares) > 1024:
            self._shares.clear()
        self._shares[key] = (now, matching, share)
        return matching, share

    def _count_share(
        self, conn: psycopg.Connection[Any], dims: int, where: str, args: list[Any]
    ) -> tuple[int, float]:
        cap = EXACT_LIMIT + 1
        row = conn.execute(
            f"SELECT (SELECT count(*) FROM (SELECT 1 FROM rag_chunks WHERE {where} LIMIT {cap}) a),"
            f" (SELECT count(*) FROM (SELECT 1 FROM rag_chunks WHERE dims = {dims} LIMIT {cap}) b),"
            " (SELECT reltuples FROM pg_class WHERE oid = 'rag_chunks'::regclass)",
            args,
        ).fetchone()
        assert row is not None
        matching, total, estimate = int(row[0]), int(row[1]), float(row[2])
        if total >= cap:
            total = max(int(estimate), total)
        if matching >= cap:  # counted only up to the cap: the planner's estimate of the filter
            plan = conn.execute(
                f"EXPLAIN (FORMAT JSON) SELECT 1 FROM rag_chunks WHERE {where}", args
            )
            found = plan.fetchone()
            assert found is not None
            matching = max(matching, int(found[0][0]["Plan"]["Plan Rows"]))
        return matching, (min(1.0, matching / total) if total else 1.0)

    def keyword_search(self, query: str, filters: Filters, k: int) -> list[SearchHit]:
        """``ts_rank_cd`` over the chunks holding one of the query's rare lexemes (the
        ``english`` configuration's, looked up in ``rag_terms`` for the filter's datasets)."""
        terms = keyword_terms(query)
        if not terms:
            return []
        where, args = self._where(filters)
        with self._conn() as conn:
            row = conn.execute(
                "SELECT array_agg(q.term) FROM unnest(tsvector_to_array("
                "to_tsvector('english', %s))) q(term) WHERE coalesce((SELECT sum(t.chunks) FROM "
                "rag_terms t WHERE t.dataset_id = ANY(%s) AND t.term = q.term), 0) <= %s",
                [" ".join(terms), list(filters.dataset_ids), self.max_term_chunks],
            ).fetchone()
            if row is None or row[0] is None:
                return []  # no term, or only common ones: the vector half carries the search
            tsquery = " | ".join(_lexeme(term) for term in row[0])
            rows = conn.execute(
                f"SELECT {_COLUMNS}, ts_rank_cd(tsv, %s::tsquery) FROM rag_chunks "
                f"WHERE tsv @@ %s::tsquery AND {where} "
                "ORDER BY ts_rank_cd(tsv, %s::tsquery) DESC, id LIMIT %s",
                [tsquery, tsquery, *args, tsquery, k],
            ).fetchall()
        return [_hit(r) for r in rows]

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _ef_search(k: int, share: float) -> int:
    """``ef_search`` for a filter keeping ``share`` of the chunks: about ``2k`` pass it."""
    return int(min(EF_SEARCH_MAX, max(EF_SEARCH, math.ceil(2 * k / max(share, 1e-9)))))


def _lexeme(term: str) -> str:
    """A lexeme quoted for tsquery input (no operator in it is read as one)."""
    return "'" + term.replace("\\", "\\\\").replace("'", "''") + "'"


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
