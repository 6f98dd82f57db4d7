"""Migrations run forwards and backwards on SQLite and Postgres, and match the models."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from chatplane.db import migrate
from chatplane.db.models import Base
from tests.conftest import RUN_ID, postgres_database


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_object": migrate.include_object}
    )
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


async def _key_budgets_move(database_url: str) -> None:
    """0004 moves an API key's `budget_usd` into a lifetime budget row, and back."""
    config = migrate.alembic_config(database_url)
    await migrate.upgrade(database_url, "0003")
    engine = create_async_engine(database_url)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("INSERT INTO tenants (id, slug, name, sso_domains, disabled, created_at) "
                     "VALUES ('t1', 't1', 'T', '', false, :now)"),
                {"now": now},
            )  # fmt: skip
            await connection.execute(
                text("INSERT INTO users (id, tenant_id, email, role, is_superadmin, disabled, "
                     "created_at) VALUES ('u1', 't1', 'a@example.com', 'owner', false, false, "
                     ":now)"),
                {"now": now},
            )  # fmt: skip
            for key_id, budget in (("k1", 2.5), ("k2", None)):
                await connection.execute(
                    text("INSERT INTO api_keys (id, tenant_id, user_id, name, prefix, key_hash, "
                         "scopes, budget_usd, created_at) VALUES (:id, 't1', 'u1', :id, 'cp_x', "
                         ":id, 'chat', :budget, :now)"),
                    {"id": key_id, "budget": budget, "now": now},
                )  # fmt: skip
        await migrate.upgrade(database_url)
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text("SELECT tenant_id, scope, subject_id, period, limit_usd FROM budgets")
                )
            ).all()
        assert [tuple(row) for row in rows] == [("t1", "key", "k1", "lifetime", 2.5)]
        await asyncio.to_thread(command.downgrade, config, "0003")
        async with engine.connect() as connection:
            back = (
                await connection.execute(text("SELECT id, budget_usd FROM api_keys ORDER BY id"))
            ).all()
        assert [tuple(row) for row in back] == [("k1", 2.5), ("k2", None)]
    finally:
        await engine.dispose()


async def test_sqlite_moves_key_budgets(tmp_path: Path) -> None:
    await _key_budgets_move(f"sqlite+aiosqlite:///{tmp_path / 'budgets.db'}")


@pytest.mark.postgres
async def test_postgres_moves_key_budgets() -> None:
    async with postgres_database(f"chatplane_budgets_{RUN_ID}_{uuid.uuid4().hex[:6]}") as url:
        await _key_budgets_move(url)


UPGRADE_WITHOUT_ALEMBIC = """
import asyncio, sys
from chatplane.db import migrate
asyncio.run(migrate.upgrade(sys.argv[1]))
print("alembic" in sys.modules)
"""


async def test_an_embedded_database_at_head_is_checked_without_alembic(tmp_path: Path) -> None:
    assert migrate.head_revision() == migrate.HEAD_REVISION
    url = f"sqlite+aiosqlite:///{tmp_path / 'at-head.db'}"
    await migrate.upgrade(url)

    def alembic_loaded() -> str:
        done = subprocess.run(
            [sys.executable, "-c", UPGRADE_WITHOUT_ALEMBIC, url],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return done.stdout.strip()

    assert await asyncio.to_thread(alembic_loaded) == "False"
    # A database one revision behind is still upgraded (and loads Alembic for it).
    await asyncio.to_thread(command.downgrade, migrate.alembic_config(url), "-1")
    assert await migrate.current_revision(url) != migrate.HEAD_REVISION
    assert await asyncio.to_thread(alembic_loaded) == "True"
    assert await migrate.current_revision(url) == migrate.HEAD_REVISION
