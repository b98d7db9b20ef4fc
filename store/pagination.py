"""Keyset pagination over ``(created_at, id)``: the one cursor format and page query of every list.

A cursor is opaque to clients (URL-safe base64 of the last row's key). A page is fetched with
``WHERE (created_at, id) < :after ORDER BY created_at DESC, id DESC LIMIT :limit + 1`` (or the
ascending mirror), an index walk whose cost does not grow with the table.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from common.errors import ValidationFailed

T = TypeVar("T")
Key = tuple[datetime, str]


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps({"t": created_at.isoformat(), "id": row_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Key | None:
    """The key a cursor points after (None for no cursor); a malformed one is 422."""
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(data["t"]), str(data["id"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ValidationFailed(
            "Invalid cursor.",
            details=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
        ) from exc


def after(model: Any, key: Key, *, descending: bool = True) -> ColumnElement[bool]:
    """Rows strictly past ``key`` in the listing order (one row-value comparison)."""
    row = tuple_(model.created_at, model.id)
    return row < key if descending else row > key


def order(model: Any, *, descending: bool = True) -> tuple[Any, Any]:
    created: InstrumentedAttribute[Any] = model.created_at
    row_id: InstrumentedAttribute[Any] = model.id
    return (created.desc(), row_id.desc()) if descending else (created.asc(), row_id.asc())


def keyset(
    query: Select[Any], model: Any, cursor: str | None, *, limit: int, descending: bool = True
) -> Select[Any]:
    """``query`` past the cursor, in listing order, one row more than a page (see ``page``)."""
    key = decode_cursor(cursor)
    if key is not None:
        query = query.where(after(model, key, descending=descending))
    return query.order_by(*order(model, descending=descending)).limit(limit + 1)


def page(rows: Sequence[T], limit: int) -> tuple[list[T], str | None]:
    """Split ``limit + 1`` fetched rows into the page and the next page's cursor (or None)."""
    if len(rows) <= limit:
        return list(rows), None
    last: Any = rows[limit - 1]
    return list(rows[:limit]), encode_cursor(last.created_at, last.id)


def list_page(
    session: Session,
    query: Select[Any],
    model: Any,
    *,
    limit: int,
    cursor: str | None,
    descending: bool = True,
) -> tuple[list[Any], str | None]:
    """One page of ``query`` (already filtered) and the cursor of the next page."""
    rows = session.scalars(keyset(query, model, cursor, limit=limit, descending=descending))
    return page(rows.all(), limit)
