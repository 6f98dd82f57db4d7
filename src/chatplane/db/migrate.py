"""Run Alembic migrations from code (`chatplane db upgrade`, and `serve` and the CLI on the
embedded SQLite)."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from chatplane.db.engine import ensure_sqlite_dir, sqlite_file
from chatplane.knowledge.models import is_lexical_index

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The newest revision this release knows (a test keeps it equal to Alembic's head). An
# embedded database already at it is recognised with one SQLite read, without loading
# Alembic (about half a second of every CLI command).
HEAD_REVISION = "0008"


def include_object(
    _object: object, name: str | None, type_: str, _reflected: bool, _compare_to: object
) -> bool:
    """Autogenerate compares everything but the lexical index, which is raw DDL."""
    return not is_lexical_index(name, type_)


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


async def upgrade(database_url: str, revision: str = "head") -> None:
    if revision == "head":
        current = await asyncio.to_thread(_sqlite_revision, database_url)
        if current == HEAD_REVISION:
            return  # already there: Alembic stays unloaded
    from alembic import command

    ensure_sqlite_dir(database_url)
    # Alembic's env runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), revision)


def recorded_revision(connection: sqlite3.Connection) -> str | None:
    """The revision an SQLite database records (None: none yet); raises
    `sqlite3.DatabaseError` when it has no Alembic table at all."""
    row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else None


def _sqlite_revision(database_url: str) -> str | None:
    """The revision an SQLite database file records, read-only; None for another database,
    a file not there yet, or one without Alembic's table."""
    path = sqlite_file(database_url)
    if path is None or not path.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            return recorded_revision(db)
    except sqlite3.Error:
        return None


async def current_revision(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("")).get_current_head()
