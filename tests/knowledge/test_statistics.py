"""The lexical search's Postgres statistics are refreshed by the writers of chunks once a
tenth of the table changed, so a search right after a large ingestion plans from them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text as sql

from chatplane.db import migrate
from chatplane.db.engine import Database, create_engine
from chatplane.knowledge.index import KnowledgeIndex
from chatplane.knowledge.lexical import STALE_MIN_ROWS, refresh_statistics
from tests.conftest import RUN_ID, make_settings, postgres_database
from tests.knowledge.test_index import Tenancy, drafts_of

pytestmark = pytest.mark.postgres

TSV_STATISTICS = sql(
    "SELECT count(*) FROM pg_stats WHERE tablename = 'kb_chunks' AND attname = 'tsv'"
    " AND most_common_elems IS NOT NULL"
)


@pytest.fixture
async def db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    settings = make_settings(tmp_path_factory.mktemp("kb-statistics"))
    async with postgres_database(f"chatplane_kb_stats_{RUN_ID}") as url:
        await migrate.upgrade(url)
        database = Database(create_engine(settings, url))
        async with database.session() as session:  # only the code under test analyzes
            await session.execute(sql("ALTER TABLE kb_chunks SET (autovacuum_enabled = false)"))
            await session.commit()
        yield database
        await database.close()


async def fill(db: Database, tenancy: Tenancy, kb_id: str, chunks: int) -> None:
    """One document of `chunks` chunks, with the writer's table counters flushed at commit
    (Postgres otherwise reports them to the statistics views up to seconds later)."""
    document_id = await tenancy.document(KnowledgeIndex(db, None), kb_id, "seed text")
    texts = [f"common words and rare{n} words" for n in range(chunks)]
    async with db.session() as session:
        await KnowledgeIndex(db, None).write_document(
            session,
            tenant_id=tenancy.tenant_id,
            kb_id=kb_id,
            document_id=document_id,
            drafts=drafts_of(texts),
            vectors=None,
        )
        await session.execute(sql("SELECT pg_stat_force_next_flush()"))
        await session.commit()


async def statistics_rows(db: Database) -> int:
    async with db.session() as session:
        return int((await session.execute(TSV_STATISTICS)).scalar_one())


async def test_a_grown_table_is_analyzed_once(db: Database) -> None:
    tenancy = await Tenancy.create(db)
    kb_id = await tenancy.kb()
    await fill(db, tenancy, kb_id, STALE_MIN_ROWS + 200)
    assert await statistics_rows(db) == 0

    async with db.session() as session:
        assert await refresh_statistics(session, "postgresql")
    assert await statistics_rows(db) == 1
    async with db.session() as session:  # fresh now: nothing to do
        assert not await refresh_statistics(session, "postgresql")


async def test_a_small_change_leaves_the_statistics_alone(db: Database) -> None:
    tenancy = await Tenancy.create(db)
    await fill(db, tenancy, await tenancy.kb(), 50)
    async with db.session() as session:
        assert not await refresh_statistics(session, "postgresql")
    assert await statistics_rows(db) == 0
