"""Writes gateway usage to the database in batches, off the request path.

While the database does not answer, records wait in memory and are retried. What is still
waiting when the process stops (or when the backlog reaches `SPILL_AT`) goes to the usage
journal (`chatplane.usage.journal`), which every process replays into the database at start
and every `REPLAY_INTERVAL_S`; the insert skips ids already stored, so a replay is harmless
twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, cast

import structlog
from sqlalchemy import Dialect, Insert, Table, insert

from chatplane.db.base import new_id, utcnow
from chatplane.db.engine import Database
from chatplane.errors import ServiceUnavailable
from chatplane.observability import metrics
from chatplane.usage.journal import ClaimedBatch, JournalUnavailable, Row, UsageJournal
from chatplane.usage.models import UsageRecord

log = structlog.get_logger("chatplane.usage")

FLUSH_INTERVAL_S = 0.5
MAX_BATCH = 500
MAX_BACKLOG = 100_000
# A backlog this long means the database has been away for a while: it goes to the journal
# (from the flush loop, never from `record`), so memory stays bounded and nothing is dropped
# while the journal takes it.
SPILL_AT = MAX_BACKLOG // 2
REPLAY_INTERVAL_S = 30.0


def _insert_skipping_stored_ids(dialect: str) -> Insert:
    """INSERT ... ON CONFLICT (id) DO NOTHING, so a batch sent twice is stored once. Each
    dialect's module is imported only on its database (SQLite never loads Postgres's)."""
    table = cast(Table, UsageRecord.__table__)
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["id"])
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).on_conflict_do_nothing(index_elements=["id"])
    return insert(table)


# A record's columns and the value a journaled row written before a column existed gets.
COLUMNS: dict[str, object] = {
    "id": None,
    "created_at": None,
    "tenant_id": None,
    "user_id": None,
    "api_key_id": None,
    "turn_id": None,
    "source": "gateway",
    "model": None,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "cost_usd": 0.0,
    "cached": False,
}


class BatchInsert:
    """The batch insert compiled once into the driver's own SQL (both drivers the settings
    allow are positional), with the column types' bind conversions picked once: a batch
    goes to the driver's executemany as tuples.

    Through a Core insert SQLAlchemy builds every row's parameters again on each call, in
    the event loop's thread: a flush of 140 rows (half a second at 280 requests/s) held
    the loop ~3.9 ms that way and ~2.9 ms this way, while streams were due their chunks."""

    def __init__(self, dialect: Dialect) -> None:
        compiled = _insert_skipping_stored_ids(dialect.name).compile(
            dialect=dialect, column_keys=list(COLUMNS)
        )
        self.sql = compiled.string
        table = cast(Table, UsageRecord.__table__)
        names = list(compiled.positiontup or ())
        if sorted(names) != sorted(COLUMNS):
            raise RuntimeError(f"the usage insert binds {names}, not the record's columns")
        self._columns: list[tuple[str, object, Callable[[Any], Any] | None]] = [
            (name, COLUMNS[name], table.c[name].type.bind_processor(dialect)) for name in names
        ]

    def parameters(self, rows: list[Row]) -> list[tuple[object, ...]]:
        columns = self._columns
        return [
            tuple(
                row.get(name, default) if convert is None else convert(row.get(name, default))
                for name, default, convert in columns
            )
            for row in rows
        ]


def _stop_if_cancelled() -> None:
    """End a loop whose task was cancelled even if the cancellation was lost on the way: on
    Python 3.11 a cancellation that arrives as a connection attempt fails (the database
    refusing connections during a stop) can surface as that failure instead, which the
    loop handles and goes on, and `close` waited for it until its time ran out, with the
    records still pending and not journaled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class UsageRecorder:
    def __init__(
        self,
        db: Database,
        journal: UsageJournal | None = None,
        *,
        replay_interval_s: float = REPLAY_INTERVAL_S,
        spill_at: int = SPILL_AT,
    ) -> None:
        self.db = db
        self.journal = journal
        self.replay_interval_s = replay_interval_s
        self.spill_at = spill_at
        self._pending: list[Row] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self.dropped = 0
        self._insert = BatchInsert(db.engine.dialect)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._flush_loop(), name="usage-recorder")
        if self._replay_task is None and self.journal is not None:
            self._replay_task = asyncio.create_task(self._replay_loop(), name="usage-replay")

    @property
    def pending(self) -> int:
        return len(self._pending)

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
            self._drop(1)
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
            if len(self._pending) >= self.spill_at and self.journal is not None:
                try:
                    await self._spill_pending()
                except JournalUnavailable as exc:
                    log.warning("usage_spill_failed", error=str(exc), pending=len(self._pending))
            _stop_if_cancelled()

    async def flush(self) -> None:
        """Write everything pending (at shutdown, and for tests)."""
        while self._pending and await self._write_batch():
            pass

    async def _write_batch(self) -> bool:
        if not self._pending:
            return False
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        try:
            await self._store(batch)
        except ServiceUnavailable:
            # Kept for the next flush. The commit may have landed before the connection
            # broke: the rows keep their ids, and the next try skips ids already stored.
            self._pending[:0] = batch
            log.warning("usage_flush_deferred", pending=len(self._pending))
            return False
        except asyncio.CancelledError:
            # Stopped mid-write (shutdown): kept for the final flush, or the journal.
            self._pending[:0] = batch
            raise
        except Exception:
            self._drop(len(batch))
            raise
        return True

    async def _store(self, rows: list[Row]) -> None:
        """One batch in one transaction; ids already stored are skipped."""
        parameters = self._insert.parameters(rows)
        async with self.db.session() as session:
            connection = await session.connection()
            await connection.exec_driver_sql(self._insert.sql, parameters)
            await session.commit()

    def _drop(self, records: int) -> None:
        self.dropped += records
        metrics.usage_journal("dropped", records)

    async def _spill_pending(self) -> None:
        """Move every pending record to the journal, in batches the replay inserts at once."""
        assert self.journal is not None
        # The rows stay pending until the journal has them: a spill cut short (the process
        # stopping) leaves them to the next try, which at worst journals them twice, and the
        # replay stores each id once.
        rows = self._pending[:]
        await self.journal.spill(
            [rows[start : start + MAX_BATCH] for start in range(0, len(rows), MAX_BATCH)]
        )
        del self._pending[: len(rows)]
        metrics.usage_journal("spilled", len(rows))
        log.warning("usage_spilled", records=len(rows))

    async def _replay_loop(self) -> None:
        while True:
            try:
                await self.replay()
            except JournalUnavailable as exc:
                log.warning("usage_replay_failed", error=str(exc))
            except Exception:  # a batch the database refuses must not stop later replays
                log.exception("usage_replay_failed")
            _stop_if_cancelled()
            await asyncio.sleep(self.replay_interval_s)

    async def replay(self) -> int:
        """Insert journaled batches, one claimed batch at a time, until the journal is empty
        or the database does not answer; a batch leaves the journal only after its commit.
        Returns the number of records replayed."""
        if self.journal is None:
            return 0
        replayed = 0
        while (batch := await self.journal.claim()) is not None:
            try:
                await self._store(batch.rows)
            except ServiceUnavailable:
                await self._release(batch)
                log.warning("usage_replay_deferred", replayed=replayed)
                return replayed
            except BaseException:
                await self._release(batch)
                raise
            await self.journal.done(batch)
            replayed += len(batch.rows)
            metrics.usage_journal("replayed", len(batch.rows))
        if replayed:
            log.info("usage_replayed", records=replayed)
        return replayed

    async def _release(self, batch: ClaimedBatch) -> None:
        """Back to the journal for the next try; if the journal does not answer either, the
        claim runs out and whoever claims next takes it."""
        assert self.journal is not None
        with contextlib.suppress(JournalUnavailable):
            await self.journal.release(batch)

    async def close(self) -> None:
        """Stop the loops, write what the database takes, and journal the rest."""
        for task in (self._task, self._replay_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._replay_task = None
        await self.flush()
        error = None
        if self._pending and self.journal is not None:
            try:
                await self._spill_pending()
            except JournalUnavailable as exc:
                error = str(exc)
        if self._pending:  # neither the database nor a journal took them
            log.error("usage_lost", records=len(self._pending), error=error)
            self._drop(len(self._pending))
            self._pending = []
        if self.journal is not None:
            await self.journal.close()
