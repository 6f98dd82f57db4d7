"""Gateway usage that the database could not take before the process stopped: spilled to the
journal (a file in the data dir; Redis), replayed into the database by the next process,
stored exactly once. The database that is down is a real address that refuses connections."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from chatplane.db import migrate
from chatplane.db.base import new_id
from chatplane.db.engine import Database, create_engine
from chatplane.usage.journal import (
    ClaimedBatch,
    FileUsageJournal,
    JournalUnavailable,
    RedisUsageJournal,
    UsageJournal,
    create_usage_journal,
    dump_batch,
)
from chatplane.usage.models import UsageRecord
from chatplane.usage.recorder import MAX_BATCH, UsageRecorder
from tests.admin.support import eventually
from tests.conftest import make_settings
from tests.own_redis import OwnRedis

# Nothing listens on port 1: every connection is refused at once, as in an outage.
REFUSING_URL = "postgresql+asyncpg://postgres@127.0.0.1:1/chatplane"


@pytest.fixture(params=["sqlite", "postgres"])
async def database(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> AsyncIterator[Database]:
    """The database that answers again after the outage, migrated."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'chatplane.db'}"
    if request.param == "postgres":
        url = postgres_url
    await migrate.upgrade(url)
    db = Database(create_engine(make_settings(tmp_path), url))
    yield db
    await db.close()


@pytest.fixture
async def down(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(create_engine(make_settings(tmp_path), REFUSING_URL))
    yield db
    await db.close()


def record(recorder: UsageRecorder, tenant_id: str, count: int) -> None:
    for tokens in range(count):
        recorder.record(
            tenant_id=tenant_id,
            user_id=None,
            api_key_id=None,
            model="mock",
            prompt_tokens=tokens,
            completion_tokens=1,
            cost_usd=0.5,
            cached=tokens % 2 == 1,
        )


async def stored(db: Database, tenant_id: str) -> tuple[int, int, int]:
    """Rows, distinct prompt token counts and cached rows of the tenant."""
    async with db.session() as session:
        row = (
            await session.execute(
                select(
                    func.count(),
                    func.count(UsageRecord.prompt_tokens.distinct()),
                    func.count().filter(UsageRecord.cached.is_(True)),
                ).where(UsageRecord.tenant_id == tenant_id)
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def spill_during_outage(
    down: Database, journal: UsageJournal, tenant_id: str, count: int
) -> None:
    """A process that served `count` calls stops while the database refuses connections."""
    recorder = UsageRecorder(down, journal)
    recorder.start()
    record(recorder, tenant_id, count)
    await recorder.close()
    assert recorder.pending == 0
    assert recorder.dropped == 0


async def test_the_file_journal_keeps_usage_across_a_stop_and_the_next_start_stores_it_once(
    database: Database, down: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "usage-journal"
    tenant_id = new_id()
    await spill_during_outage(down, FileUsageJournal(directory), tenant_id, 3)
    spilled = list(directory.iterdir())
    assert [path.name.startswith("pending-") for path in spilled] == [True]
    assert stat.S_IMODE(spilled[0].stat().st_mode) == 0o600
    assert await stored(database, tenant_id) == (0, 0, 0)

    restarted = UsageRecorder(database, FileUsageJournal(directory))
    restarted.start()  # replays at once

    async def journal_empty() -> bool:
        return not any(directory.iterdir())

    await eventually(journal_empty)
    await restarted.close()
    assert await stored(database, tenant_id) == (3, 3, 1)
    assert await UsageRecorder(database, FileUsageJournal(directory)).replay() == 0
    assert await stored(database, tenant_id) == (3, 3, 1)


async def test_a_replay_after_a_partly_stored_batch_counts_each_record_once(
    database: Database, down: Database, tmp_path: Path
) -> None:
    """A replayer died after its commit but before taking the batch off the journal, and
    its claim ran out: the next replay claims the batch again, and stores nothing twice."""
    directory = tmp_path / "usage-journal"
    tenant_id = new_id()
    await spill_during_outage(down, FileUsageJournal(directory, claim_timeout_s=0), tenant_id, 4)
    dead = FileUsageJournal(directory, claim_timeout_s=0)
    claimed = await dead.claim()
    assert claimed is not None
    async with database.session() as session:  # its commit of half the batch landed
        session.add_all(UsageRecord(**row) for row in claimed.rows[:2])
        await session.commit()
    assert await stored(database, tenant_id) == (2, 2, 1)

    assert await UsageRecorder(database, FileUsageJournal(directory)).replay() == 4
    assert await stored(database, tenant_id) == (4, 4, 2)
    assert not any(directory.iterdir())
    await dead.done(claimed)  # the late finish of the dead claim changes nothing
    assert await UsageRecorder(database, FileUsageJournal(directory)).replay() == 0


async def test_a_batch_journaled_before_a_column_existed_is_stored_with_its_default(
    database: Database, tmp_path: Path
) -> None:
    """A journal written by an older version (its rows have no `cached`, no `source`) is
    replayed with the columns' defaults; every value it has is stored as it was."""
    directory = tmp_path / "usage-journal"
    tenant_id, record_id = new_id(), new_id()
    created_at = datetime(2026, 11, 2, 9, 30, 15, 123456, tzinfo=UTC)
    old_row = {
        "id": record_id,
        "created_at": created_at.isoformat(),
        "tenant_id": tenant_id,
        "user_id": "u" * 32,
        "api_key_id": None,
        "turn_id": None,
        "model": "gpt-4o-mini",
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "cost_usd": 0.00012345,
    }
    directory.mkdir()
    directory.joinpath("pending-1-old.json").write_bytes(dump_batch([old_row]))

    assert await UsageRecorder(database, FileUsageJournal(directory)).replay() == 1
    async with database.session() as session:
        record = await session.get(UsageRecord, record_id)
    assert record is not None
    assert (record.tenant_id, record.user_id, record.api_key_id, record.turn_id) == (
        tenant_id,
        "u" * 32,
        None,
        None,
    )
    assert (record.model, record.prompt_tokens, record.completion_tokens) == ("gpt-4o-mini", 12, 34)
    assert record.cost_usd == pytest.approx(0.00012345)
    assert record.created_at == created_at
    assert (record.source, record.cached) == ("gateway", False)


class LosesItsCancellation(FileUsageJournal):
    """A journal whose claim, cancelled, fails as unavailable instead: how a cancellation
    that arrives as a refused connection attempt fails can surface on Python 3.11."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.claiming = asyncio.Event()

    async def claim(self) -> ClaimedBatch | None:
        self.claiming.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise JournalUnavailable("connection refused") from None
        return None


async def test_a_stop_ends_the_loops_even_when_a_cancellation_is_lost_on_the_way(
    database: Database, tmp_path: Path
) -> None:
    journal = LosesItsCancellation(tmp_path / "usage-journal")
    recorder = UsageRecorder(database, journal)
    recorder.start()
    await journal.claiming.wait()  # the replay loop is in its claim
    record(recorder, new_id(), 2)

    async with asyncio.timeout(5):  # not the replay loop's 30 s wait
        await recorder.close()
    assert recorder.pending == 0
    assert recorder.dropped == 0


async def test_a_replay_while_the_database_is_down_keeps_the_journal(
    down: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "usage-journal"
    await spill_during_outage(down, FileUsageJournal(directory), new_id(), 2)
    assert await UsageRecorder(down, FileUsageJournal(directory)).replay() == 0
    assert [path.name.startswith("pending-") for path in directory.iterdir()] == [True]


async def test_a_long_backlog_is_spilled_by_the_flush_loop_instead_of_dropped(
    database: Database, down: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "usage-journal"
    tenant_id = new_id()
    recorder = UsageRecorder(down, FileUsageJournal(directory), spill_at=5)
    recorder.start()
    record(recorder, tenant_id, 5)

    async def spilled() -> bool:
        return recorder.pending == 0 and directory.is_dir() and any(directory.iterdir())

    await eventually(spilled)
    await recorder.close()
    assert recorder.dropped == 0
    assert await UsageRecorder(database, FileUsageJournal(directory)).replay() == 5
    assert await stored(database, tenant_id) == (5, 5, 2)


async def test_the_redis_journal_is_replayed_once_by_concurrent_replicas(
    own_redis: OwnRedis, down: Database, tmp_path: Path, postgres_url: str
) -> None:
    """A stopped replica spilled more than one batch to Redis; three others replay at the
    same time: each batch is claimed by one of them, every record is stored once."""
    await migrate.upgrade(postgres_url)
    database = Database(create_engine(make_settings(tmp_path), postgres_url))
    prefix = f"test-{new_id()}"
    tenant_id = new_id()
    count = 2 * MAX_BATCH + 7
    try:
        await spill_during_outage(
            down, RedisUsageJournal.from_url(own_redis.url, key_prefix=prefix), tenant_id, count
        )
        journals = [RedisUsageJournal.from_url(own_redis.url, key_prefix=prefix) for _ in range(3)]
        probe = journals[0]
        assert probe.journal_key == f"{prefix}:{{usage}}:journal"
        replayers = [UsageRecorder(database, journal) for journal in journals]
        replayed = await asyncio.gather(*(replayer.replay() for replayer in replayers))
        assert sum(replayed) == count
        assert await stored(database, tenant_id) == (count, count, count // 2)
        assert await probe.claim() is None
        for replayer in replayers:
            await replayer.close()
    finally:
        await database.close()


async def test_a_redis_claim_that_ran_out_is_replayed_by_another_replica(
    own_redis: OwnRedis, down: Database, tmp_path: Path, postgres_url: str
) -> None:
    await migrate.upgrade(postgres_url)
    database = Database(create_engine(make_settings(tmp_path), postgres_url))
    prefix = f"test-{new_id()}"
    tenant_id = new_id()
    try:
        await spill_during_outage(
            down, RedisUsageJournal.from_url(own_redis.url, key_prefix=prefix), tenant_id, 3
        )
        dead = RedisUsageJournal.from_url(own_redis.url, key_prefix=prefix, claim_timeout_s=0)
        claimed = await dead.claim()
        assert claimed is not None
        assert len(claimed.rows) == 3
        async with database.session() as session:  # its commit of one record landed
            session.add(UsageRecord(**claimed.rows[0]))
            await session.commit()

        survivor = UsageRecorder(
            database, RedisUsageJournal.from_url(own_redis.url, key_prefix=prefix)
        )
        assert await survivor.replay() == 3
        assert await stored(database, tenant_id) == (3, 3, 1)
        await dead.done(claimed)
        assert await survivor.replay() == 0
        await survivor.close()
        await dead.close()
    finally:
        await database.close()


async def test_the_journal_is_redis_when_the_deployment_has_it_else_the_data_dir(
    tmp_path: Path,
) -> None:
    on_disk = create_usage_journal(make_settings(tmp_path))
    assert isinstance(on_disk, FileUsageJournal)
    assert on_disk.directory == tmp_path / "usage-journal"
    shared = create_usage_journal(
        make_settings(tmp_path, redis_url="redis://127.0.0.1:6379/0", redis_prefix="tenant-a")
    )
    assert isinstance(shared, RedisUsageJournal)
    assert shared.journal_key == "tenant-a:{usage}:journal"
    assert shared.claimed_key == "tenant-a:{usage}:claimed"
    await shared.close()


async def test_a_batch_that_cannot_be_read_is_set_aside_and_the_rest_replayed(
    own_redis: OwnRedis, database: Database, down: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "usage-journal"
    prefix = f"test-{new_id()}"
    tenant_id = new_id()
    shared = RedisUsageJournal.from_url(own_redis.url, key_prefix=prefix)
    await spill_during_outage(down, FileUsageJournal(directory), tenant_id, 2)
    await spill_during_outage(down, shared, tenant_id, 3)
    directory.joinpath("pending-0-garbage.json").write_bytes(b"{not json")
    client = Redis.from_url(own_redis.url)
    try:
        await client.lpush(shared.journal_key, b'{"not": "a batch"}')
        assert await UsageRecorder(database, FileUsageJournal(directory)).replay() == 2
        assert [path.name for path in directory.iterdir()] == ["corrupt-0-garbage.json"]
        replica = UsageRecorder(
            database, RedisUsageJournal.from_url(own_redis.url, key_prefix=prefix)
        )
        assert await replica.replay() == 3
        await replica.close()
        assert await client.lrange(shared.corrupt_key, 0, -1) == [b'{"not": "a batch"}']
        assert await client.zcard(shared.claimed_key) == 0
    finally:
        await client.aclose()
    assert await stored(database, tenant_id) == (5, 3, 2)
