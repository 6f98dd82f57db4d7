"""Usage as CSV: a header, then one line per group, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable

from chatplane.usage.repository import UsageRow

# A cell a spreadsheet would run as a formula (CSV injection) gets a leading quote.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
LINES_PER_CHUNK = 200

LABEL_COLUMNS = {
    "day": ("day",),
    "tenant": ("tenant_id", "tenant_slug"),
    "model": ("model",),
    "user": ("user_id", "user_email"),
    "key": ("api_key_id", "key_name"),
    "source": ("source",),
}
# `cached_requests` (of `requests`, those answered from the gateway response cache, at no
# cost) comes last, so a sheet that reads the earlier columns by position keeps working.
SUM_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "cached_requests")


def safe_cell(value: str | None) -> str:
    if value is None:
        return ""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def header(groups: Iterable[str]) -> list[str]:
    return [column for group in groups for column in LABEL_COLUMNS[group]] + list(SUM_COLUMNS)


def line(row: UsageRow, groups: Iterable[str]) -> list[str]:
    labels = [
        safe_cell(getattr(row, column)) for group in groups for column in LABEL_COLUMNS[group]
    ]
    return [
        *labels,
        str(row.requests),
        str(row.prompt_tokens),
        str(row.completion_tokens),
        f"{row.cost_usd:.8f}",
        str(row.cached_requests),
    ]


async def csv_chunks(rows: AsyncIterator[UsageRow], groups: tuple[str, ...]) -> AsyncIterator[str]:
    """The CSV text in chunks of a few hundred lines."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header(groups))
    count = 0
    async for row in rows:
        writer.writerow(line(row, groups))
        count += 1
        if count % LINES_PER_CHUNK == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
