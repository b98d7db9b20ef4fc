"""The embedded index: one SQLite file in the data dir (chunks, float32 vectors, an FTS5 table
for BM25) and, per dataset, the vectors as one normalised numpy matrix held in memory and
reloaded when the dataset's version moves (any process may have written it). Exact cosine
search: a matrix-vector product, milliseconds at 100k chunks."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, dataset_id TEXT NOT NULL, file_id TEXT NOT NULL,
    source TEXT NOT NULL, heading TEXT NOT NULL, text TEXT NOT NULL,
    start_char INTEGER NOT NULL, end_char INTEGER NOT NULL, vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_chunks_dataset_file ON chunks (dataset_id, file_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5 (text, tokenize = 'porter unicode61');
CREATE TABLE IF NOT EXISTS versions (dataset_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
"""
_COLUMNS = "id, dataset_id, file_id, source, heading, text, start_char, end_char"


class _Matrix:
    def __init__(self, version: int, ids: np.ndarray, sources: list[str], matrix: Vector) -> None:
        self.version = version
        self.ids = ids
        self.sources = sources
        self.matrix = matrix
        self._rows: dict[str, np.ndarray] = {}

    def rows(self, source: str | None) -> np.ndarray | None:
        """The row numbers of ``source``'s chunks (None: every row), computed once."""
        if source is None:
            return None
        found = self._rows.get(source)
        if found is None:
            found = np.flatnonzero(np.array([s == source for s in self.sources], dtype=bool))
            self._rows[source] = found
        return found


class EmbeddedIndex(ChunkIndex):
    def __init__(self, url: str) -> None:
        self.path = Path(url.removeprefix("sqlite:///"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._cache: dict[str, _Matrix] = {}
        self._cache_lock = threading.Lock()
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _bump(self, conn: sqlite3.Connection, dataset_id: str) -> None:
        conn.execute(
            "INSERT INTO versions (dataset_id, version) VALUES (?, 1) "
            "ON CONFLICT (dataset_id) DO UPDATE SET version = version + 1",
            (dataset_id,),
        )

    def _delete(self, conn: sqlite3.Connection, where: str, args: tuple[str, ...]) -> int:
        conn.execute(
            f"DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE {where})", args
        )
        return conn.execute(f"DELETE FROM chunks WHERE {where}", args).rowcount

    def replace_file(
        self,
        dataset_id: str,
        file_id: str,
        source: str,
        chunks: Sequence[IndexedChunk],
        vectors: Vector,
    ) -> int:
        conn = self._conn()
        vectors = _normalised(vectors)
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._delete(conn, "dataset_id = ? AND file_id = ?", (dataset_id, file_id))
            for chunk, vector in zip(chunks, vectors, strict=True):
                cur = conn.execute(
                    "INSERT INTO chunks (dataset_id, file_id, source, heading, text, start_char, "
                    "end_char, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        *chunk_row(dataset_id, file_id, source, chunk),
                        vector.astype(np.float32).tobytes(),
                    ),
                )
                conn.execute(
                    "INSERT INTO chunks_fts (rowid, text) VALUES (?, ?)",
                    (cur.lastrowid, f"{chunk.heading}\n{chunk.text}"),
                )
            self._bump(conn, dataset_id)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(chunks)

    def _write(self, dataset_id: str, where: str, args: tuple[str, ...]) -> int:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            removed = self._delete(conn, where, args)
            self._bump(conn, dataset_id)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return removed

    def delete_file(self, dataset_id: str, file_id: str) -> int:
        return self._write(dataset_id, "dataset_id = ? AND file_id = ?", (dataset_id, file_id))

    def delete_dataset(self, dataset_id: str) -> int:
        return self._write(dataset_id, "dataset_id = ?", (dataset_id,))

    def count(self, dataset_id: str, file_id: str | None = None) -> int:
        if file_id is None:
            row = self._conn().execute(
                "SELECT count(*) FROM chunks WHERE dataset_id = ?", (dataset_id,)
            )
        else:
            row = self._conn().execute(
                "SELECT count(*) FROM chunks WHERE dataset_id = ? AND file_id = ?",
                (dataset_id, file_id),
            )
        return int(row.fetchone()[0])

    def _matrix(self, dataset_id: str) -> _Matrix:
        conn = self._conn()
        row = conn.execute("SELECT version FROM versions WHERE dataset_id = ?", (dataset_id,))
        found = row.fetchone()
        version = int(found[0]) if found else 0
        cached = self._cache.get(dataset_id)
        if cached is not None and cached.version == version:
            return cached
        rows = conn.execute(
            "SELECT id, source, vector FROM chunks WHERE dataset_id = ? ORDER BY id", (dataset_id,)
        ).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        matrix = (
            np.vstack([np.frombuffer(r[2], dtype=np.float32) for r in rows])
            if rows
            else np.zeros((0, 1), dtype=np.float32)
        )
        loaded = _Matrix(version, ids, [r[1] for r in rows], matrix)
        with self._cache_lock:
            self._cache[dataset_id] = loaded
        return loaded

    def vector_search(self, vector: Vector, filters: Filters, k: int) -> list[SearchHit]:
        query = _normalised(vector.reshape(1, -1))[0]
        scored: list[tuple[float, int]] = []
        for dataset_id in filters.dataset_ids:
            m = self._matrix(dataset_id)
            if not len(m.ids) or m.matrix.shape[1] != query.shape[0]:
                continue
            rows = m.rows(filters.source)  # the filter first: only its rows are multiplied
            ids = m.ids if rows is None else m.ids[rows]
            scores = (m.matrix if rows is None else m.matrix[rows]) @ query
            top = np.argpartition(-scores, k)[:k] if len(scores) > k else np.arange(len(scores))
            scored += [(float(scores[i]), int(ids[i])) for i in top]
        scored.sort(key=lambda pair: -pair[0])
        return self._hits(scored[:k])

    def _rare_terms(self, terms: list[str]) -> list[str]:
        """The terms held by at most ``max_term_chunks`` chunks: each counted by an FTS5 match
        stopped at ``max_term_chunks + 1`` rowids (its doclist is read in rowid order, so the
        count costs the same for a term in every chunk; a term's chunks are counted over the
        whole index, as Lucene's document frequencies are over the whole shard)."""
        conn = self._conn()
        cap = self.max_term_chunks + 1
        rare = []
        for term in terms:
            row = conn.execute(
                "SELECT count(*) FROM (SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? "
                "LIMIT ?)",
                (term, cap),
            ).fetchone()
            if int(row[0]) < cap:
                rare.append(term)
        return rare

    def keyword_search(self, query: str, filters: Filters, k: int) -> list[SearchHit]:
        if not filters.dataset_ids:
            return []
        quoted = ['"' + t.replace('"', "") + '"' for t in keyword_terms(query)]
        terms = self._rare_terms([t for t in quoted if t != '""'])
        if not terms:
            return []
        marks = ",".join("?" for _ in filters.dataset_ids)
        sql = (
            "SELECT c.id, -bm25(chunks_fts) FROM chunks_fts "
            "JOIN chunks c ON c.id = chunks_fts.rowid "
            f"WHERE chunks_fts MATCH ? AND c.dataset_id IN ({marks})"
        )
        args: list[object] = [" OR ".join(terms), *filters.dataset_ids]
        if filters.source is not None:
            sql += " AND c.source = ?"
            args.append(filters.source)
        sql += " ORDER BY bm25(chunks_fts) LIMIT ?"
        args.append(k)
        rows = self._conn().execute(sql, args).fetchall()
        return self._hits([(float(r[1]), int(r[0])) for r in rows])

    def _hits(self, scored: list[tuple[float, int]]) -> list[SearchHit]:
        if not scored:
            return []
        marks = ",".join("?" for _ in scored)
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM chunks WHERE id IN ({marks})", [cid for _, cid in scored]
        )
        by_id = {r[0]: r for r in rows.fetchall()}
        return [_hit(by_id[cid], score) for score, cid in scored if cid in by_id]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _hit(row: Sequence[object], score: float) -> SearchHit:
    cid, dataset_id, file_id, source, heading, text, start, end = row
    return SearchHit(
        chunk_id=int(cid),  # type: ignore[call-overload]
        dataset_id=str(dataset_id),
        file_id=str(file_id),
        source=str(source),
        heading=str(heading),
        text=str(text),
        start=int(start),  # type: ignore[call-overload]
        end=int(end),  # type: ignore[call-overload]
        score=round(score, 6),
    )


def _normalised(vectors: Vector) -> Vector:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)
