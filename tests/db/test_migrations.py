"""Migrations run forwards and backwards on SQLite and Postgres, and match the models."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from chatplane.db import migrate
from chatplane.db.models import Base
from tests.conftest import RUN_ID, postgres_database


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def _round_trip(database_url: str) -> None:
    await migrate.upgrade(database_url)
    config = migrate.alembic_config(database_url)
    await asyncio.to_thread(command.downgrade, config, "base")
    assert await migrate.current_revision(database_url) is None
    await migrate.upgrade(database_url)
    assert await migrate.current_revision(database_url) == migrate.head_revision()
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_sqlite_round_trip_without_drift(tmp_path: Path) -> None:
    await _round_trip(f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}")


@pytest.mark.postgres
async def test_postgres_round_trip_without_drift() -> None:
    async with postgres_database(f"chatplane_migrations_{RUN_ID}_{uuid.uuid4().hex[:6]}") as url:
        await _round_trip(url)
