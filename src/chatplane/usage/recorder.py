"""Writes gateway usage to the database in batches, off the request path."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from sqlalchemy import Insert, insert

from chatplane.db.base import new_id, utcnow
from chatplane.db.engine import Database
from chatplane.errors import ServiceUnavailable
from chatplane.usage.models import UsageRecord

log = structlog.get_logger("chatplane.usage")

FLUSH_INTERVAL_S = 0.5
MAX_BATCH = 500
MAX_BACKLOG = 100_000


def _insert_skipping_stored_ids(dialect: str) -> Insert:
    """INSERT ... ON CONFLICT (id) DO NOTHING, so a batch sent twice is stored once. Each
    dialect's module is imported only on its database (SQLite never loads Postgres's)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(UsageRecord).on_conflict_do_nothing(index_elements=["id"])
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(UsageRecord).on_conflict_do_nothing(index_elements=["id"])
    return insert(UsageRecord)


class UsageRecorder:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: list[dict[str, object]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self._insert = _insert_skipping_stored_ids(db.engine.dialect.name)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._flush_loop(), name="usage-recorder")

    def record(
        self,
        *,
        tenant_id: str,
        user_id: str | None,
        api_key_id: str | None,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        source: str = "gateway",
        cached: bool = False,
    ) -> None:
        if len(self._pending) >= MAX_BACKLOG:
            self.dropped += 1
            return
        self._pending.append(
            {
                "id": new_id(),
                "created_at": utcnow(),
                "tenant_id": tenant_id,
                "user_id": user_id,
                "api_key_id": api_key_id,
                "turn_id": None,
                "source": source,
                "model": model,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cost_usd": cost_usd,
                "cached": cached,
            }
        )
        if len(self._pending) >= MAX_BATCH:
            self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_INTERVAL_S):
                    await self._wake.wait()
            self._wake.clear()
            # One batch per wake-up: under steady traffic records keep arriving while a
            # batch is written, and chasing them would write a few rows at a time.
            try:
                await self._write_batch()
            except Exception:  # a batch the database refuses must not stop every later one
                log.exception("usage_flush_failed")

    async def flush(self) -> None:
        """Write everything pending (at shutdown, and for tests)."""
        while self._pending and await self._write_batch():
            pass

    async def _write_batch(self) -> bool:
        if not self._pending:
            return False
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        try:
            async with self.db.session() as session:
                await session.execute(self._insert, batch)
                await session.commit()
        except ServiceUnavailable:
            # Kept for the next flush. The commit may have landed before the connection
            # broke: the rows keep their ids, and the next try skips ids already stored.
            self._pending[:0] = batch
            log.warning("usage_flush_deferred", pending=len(self._pending))
            return False
        except Exception:
            self.dropped += len(batch)
            raise
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()
