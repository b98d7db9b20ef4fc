"""Datasets over vector stores Conveyor does not own, searched in place (nothing is ingested or
written there):

- ``dtype: pgvector``: an existing PostgreSQL table with a pgvector column, reached over TCP.
  The host passes the SSRF guard and the connection is pinned to the address that was checked
  (``hostaddr``: no DNS rebinding between the check and the connect); Unix sockets and libpq
  options in the URL are refused. Search is hybrid like Conveyor's own index: cosine distance on
  the vector column fused with PostgreSQL full text over the text column (``text_search``).
- ``dtype: remote_vector_store``: a collection of a store that speaks Qdrant's REST search
  (``POST {url}/collections/{collection}/points/search``, ``api-key`` header); vector search
  only, the chunk's text read from the points' payload. The URL passes the SSRF guard before
  every call and redirects are not followed.

The query is embedded with the dataset's ``embedding_model``: the store's vectors must come
from the same model (the vector size is checked: a mismatch is a 422 naming both sizes).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np
import psycopg
from psycopg import sql

from common.errors import ValidationFailed
from common.urlsafety import AllowList, check_address, check_url, check_url_async
from config import get_settings
from rag.backends.base import Filters, SearchHit, SearchIndex, Vector, keyword_terms
from rag.errors import ModelCallFailed
from rag.schemas import PgVectorTableSource, RemoteVectorStoreSource

CONNECT_TIMEOUT_SECONDS = 5
REMOTE_TIMEOUT_SECONDS = 10


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        message,
        details=[{"loc": ["body", "configuration", field], "msg": message, "type": "value_error"}],
    )


def chunk_id(dataset_id: str, key: object) -> int:
    """A stable integer id for an external row or point (fusion joins the halves on it)."""
    digest = hashlib.blake2b(f"{dataset_id}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


# -- pgvector tables ------------------------------------------------------------------------


def connection_args(url: str) -> dict[str, Any]:
    """libpq connection arguments for ``postgresql://user:password@host:port/db``, the host
    checked by the SSRF guard and pinned to the checked address. Raises 422 otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise _invalid("url", "url must be postgresql://user:password@host:port/database")
    if parts.query or parts.fragment:
        raise _invalid("url", "url takes no query options (sslmode, host, … are not accepted)")
    host = parts.hostname or ""
    if not host or host.startswith("/"):
        raise _invalid("url", "url must name a TCP host (Unix sockets are not reachable)")
    try:
        port = parts.port or 5432
    except ValueError as exc:
        raise _invalid("url", f"url has a bad port: {exc}") from None
    allowed = AllowList.parse(get_settings().crawl_allowed_hosts)
    check_url(f"http://{host}:{port}/", allowed)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise _invalid("url", f"host {host!r} did not resolve: {exc}") from None
    address = str(infos[0][4][0])
    if not allowed.allows_host(host, port):
        check_address(ipaddress.ip_address(address.split("%", 1)[0]), port, allowed, host)
    return {
        "host": host,
        "hostaddr": address,
        "port": port,
        "dbname": unquote(parts.path.lstrip("/")) or "postgres",
        "user": unquote(parts.username or "postgres"),
        "password": unquote(parts.password or ""),
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
    }


def masked_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
    return parts._replace(netloc=netloc).geturl()


def _connect(url: str) -> psycopg.Connection[Any]:
    args = connection_args(url)
    try:
        return psycopg.connect(**args, autocommit=True)
    except psycopg.Error as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _invalid(
            "url", f"could not connect to {args['host']}:{args['port']}: {message}"
        ) from None


def inspect_table(source: PgVectorTableSource) -> int | None:
    """Check the table and its columns exist (422 naming what is missing); return the vector
    column's size (None when the column was declared without one)."""
    columns = {
        "id_column": source.id_column,
        "embedding_column": source.embedding_column,
        "text_column": source.text_column,
        "source_column": source.source_column,
        "heading_column": source.heading_column,
    }
    with _connect(source.url) as conn:
        found = conn.execute("SELECT to_regclass(%s)::oid", [source.table]).fetchone()
        if found is None or found[0] is None:
            raise _invalid("table", f"table {source.table!r} does not exist (or is not visible)")
        types = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
                [found[0]],
            ).fetchall()
        )
    for field, column in columns.items():
        if column is not None and column not in types:
            raise _invalid(field, f"column {column!r} is not in table {source.table!r}")
    kind = str(types[source.embedding_column])
    match = re.fullmatch(r"vector(?:\((\d+)\))?", kind)
    if match is None:
        raise _invalid(
            "embedding_column", f"column {source.embedding_column!r} is {kind}, not a vector"
        )
    return int(match.group(1)) if match.group(1) else None


class PgVectorTable(SearchIndex):
    """One external table, searched like Conveyor's own index (one connection a search)."""

    def __init__(self, dataset_id: str, source: PgVectorTableSource) -> None:
        self.dataset_id = dataset_id
        self.source = source
        self.table = sql.Identifier(*source.table.split("."))

    def _select(self, score: sql.Composable) -> sql.Composed:
        s = self.source
        optional = [
            sql.Identifier(c) if c else sql.Literal("") for c in (s.source_column, s.heading_column)
        ]
        return sql.SQL("SELECT {}, {}, {}, {}, {} FROM {} t").format(
            sql.Identifier(s.id_column), sql.Identifier(s.text_column), *optional, score, self.table
        )

    def _where(self, filters: Filters) -> tuple[sql.Composable, list[Any]]:
        if filters.source is None:
            return sql.SQL("TRUE"), []
        if self.source.source_column is None:  # every row's source is the table's name
            return sql.SQL("TRUE" if filters.source == self.source.table else "FALSE"), []
        return sql.SQL("{} = %s").format(sql.Identifier(self.source.source_column)), [
            filters.source
        ]

    def _run(self, query: sql.Composed, args: Sequence[Any]) -> list[SearchHit]:
        with _connect(self.source.url) as conn:
            try:
                rows = conn.execute(query, args).fetchall()
            except psycopg.Error as exc:
                raise ModelCallFailed(
                    f"The pgvector table {self.source.table!r} could not be searched: "
                    f"{str(exc).strip().splitlines()[0]}"
                ) from exc
        return [
            SearchHit(
                chunk_id=chunk_id(self.dataset_id, key),
                dataset_id=self.dataset_id,
                file_id="",
                source=str(src) if src else self.source.table,
                heading=str(heading or ""),
                text=str(text or ""),
                start=0,
                end=len(str(text or "")),
                score=round(float(score), 6),
            )
            for key, text, src, heading, score in rows
        ]

    def vector_search(self, vector: Vector, filters: Filters, k: int) -> list[SearchHit]:
        column = sql.Identifier(self.source.embedding_column)
        distance = sql.SQL("{} <=> %s::vector").format(column)
        where, args = self._where(filters)
        literal = "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"
        query = sql.SQL("{} WHERE {} ORDER BY {} LIMIT %s").format(
            self._select(sql.SQL("1 - ({})").format(distance)), where, distance
        )
        return self._run(query, [literal, *args, literal, k])

    def keyword_search(self, query: str, filters: Filters, k: int) -> list[SearchHit]:
        terms = keyword_terms(query)
        if not terms or not self.source.text_search:
            return []
        tsv = sql.SQL("to_tsvector('english', {})").format(sql.Identifier(self.source.text_column))
        rank = sql.SQL("ts_rank_cd({}, to_tsquery('english', %s))").format(tsv)
        where, args = self._where(filters)
        tsquery = " | ".join(t.replace("'", "") for t in terms)
        statement = sql.SQL(
            "{} WHERE {} @@ to_tsquery('english', %s) AND {} ORDER BY 5 DESC LIMIT %s"
        ).format(self._select(rank), tsv, where)
        return self._run(statement, [tsquery, tsquery, *args, k])


# -- remote vector stores (Qdrant's REST search) --------------------------------------------


async def remote_search(
    dataset_id: str, store: RemoteVectorStoreSource, vector: Vector, filters: Filters, k: int
) -> list[SearchHit]:
    base = store.url.rstrip("/")
    url = f"{base}/collections/{store.collection}/points/search"
    await check_url_async(url, get_settings().crawl_allowed_hosts)
    values = [float(x) for x in vector]
    body: dict[str, Any] = {
        "vector": {"name": store.vector_name, "vector": values} if store.vector_name else values,
        "limit": k,
        "with_payload": True,
    }
    if filters.source is not None:
        match = {"key": store.source_field, "match": {"value": filters.source}}
        body["filter"] = {"must": [match]}
    headers = {"api-key": store.api_key} if store.api_key else {}
    try:
        async with httpx.AsyncClient(
            timeout=REMOTE_TIMEOUT_SECONDS, follow_redirects=False
        ) as client:
            response = await client.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise ModelCallFailed(f"The vector store at {base} did not answer: {exc}") from exc
    if response.status_code != 200:
        raise ModelCallFailed(
            f"The vector store at {base} answered {response.status_code}.",
            details={"status": response.status_code, "body": response.text[:500]},
        )
    try:
        points = response.json()["result"]
        return [_point_hit(dataset_id, store, p) for p in points]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelCallFailed(
            f"The vector store at {base} sent no Qdrant search result: {exc!r}"
        ) from exc


def _point_hit(dataset_id: str, store: RemoteVectorStoreSource, point: Any) -> SearchHit:
    payload = point.get("payload") or {}
    text = str(payload.get(store.text_field) or "")
    return SearchHit(
        chunk_id=chunk_id(dataset_id, point["id"]),
        dataset_id=dataset_id,
        file_id="",
        source=str(payload.get(store.source_field) or store.collection),
        heading=str(payload.get(store.heading_field) or ""),
        text=text,
        start=0,
        end=len(text),
        score=round(float(point["score"]), 6),
    )


def check_dims(dataset_id: str, expected: int | None, vector: Vector, model: str) -> None:
    if expected is not None and expected != int(np.asarray(vector).shape[0]):
        raise ValidationFailed(
            f"Dataset {dataset_id}'s vectors have {expected} dimensions; its embedding model "
            f"{model!r} gives {int(np.asarray(vector).shape[0])}: set the dataset's "
            "embedding_model to the model the store was filled with.",
        )
