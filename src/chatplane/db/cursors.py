"""Keyset pagination: an opaque cursor for (time, id), and the clause for the rows after it
in newest-first order."""

from __future__ import annotations

import base64
from datetime import datetime

import orjson
from sqlalchemy import ColumnElement, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from chatplane.errors import BadRequest


def encode_cursor(when: datetime, row_id: str) -> str:
    raw = orjson.dumps([when.isoformat(), row_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, row_id = orjson.loads(raw)
        return datetime.fromisoformat(when), str(row_id)
    except (ValueError, TypeError) as exc:
        raise BadRequest("The cursor is not valid", code="invalid_cursor", field="cursor") from exc


def older_than(
    when_column: InstrumentedAttribute[datetime],
    id_column: InstrumentedAttribute[str],
    before: tuple[datetime, str],
) -> ColumnElement[bool]:
    """Rows after `before` when ordered by (time, id) descending."""
    when, row_id = before
    return or_(when_column < when, and_(when_column == when, id_column < row_id))
