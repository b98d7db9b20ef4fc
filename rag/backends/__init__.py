"""Chunk indexes behind one interface (``base.ChunkIndex``): an embedded SQLite + numpy index in
the data dir (the default), PostgreSQL with pgvector (HNSW, cosine) when
``CONVEYOR_RAG_INDEX_URL`` names a PostgreSQL server. ``get_index()`` is this process's index."""

from __future__ import annotations

from functools import lru_cache

from config import get_settings
from rag.backends.base import ChunkIndex, IndexedChunk, SearchHit


@lru_cache(maxsize=4)
def open_index(url: str) -> ChunkIndex:
    """The index at ``url``: ``postgresql…`` → pgvector, ``sqlite:///…`` → embedded."""
    if url.startswith("postgres"):
        from rag.backends.pgvector import PgVectorIndex

        return PgVectorIndex(url)
    from rag.backends.embedded import EmbeddedIndex

    return EmbeddedIndex(url)


def index_url() -> str:
    settings = get_settings()
    if settings.rag_index_url:
        return settings.rag_index_url
    folder = settings.data_dir / "rag"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'index.db').resolve()}"


def get_index() -> ChunkIndex:
    return open_index(index_url())


__all__ = ["ChunkIndex", "IndexedChunk", "SearchHit", "get_index", "open_index"]
