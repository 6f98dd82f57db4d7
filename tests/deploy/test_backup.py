"""`chatplane backup` / `chatplane restore` on SQLite and Postgres: round trips through the
CLI, and every refusal (damaged, truncated, newer, other shape, data in the way) leaves the
live database exactly as it was."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from chatplane import backup_postgres as pg
from chatplane.auth.audit import AuditLog
from chatplane.auth.secrets import Passwords
from chatplane.auth.service import AuthService
from chatplane.backup import (
    ArchiveDamaged,
    BackupError,
    create_backup,
    restore_backup,
)
from chatplane.backup_archive import MANIFEST, read_manifest
from chatplane.chat.models import Conversation, Message
from chatplane.db import migrate
from chatplane.db.base import new_id
from chatplane.db.engine import Database, create_engine
from chatplane.settings import Settings, load_or_create_secret
from tests.conftest import RUN_ID, make_settings, postgres_database, service_missing

TABLES = ("tenants", "users", "api_keys", "conversations", "messages", "alembic_version")
FAST_HASHING = {
    "CHATPLANE_PASSWORD_TIME_COST": "1",
    "CHATPLANE_PASSWORD_MEMORY_KIB": "1024",
    "CHATPLANE_PASSWORD_PARALLELISM": "1",
}


def chatplane(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env.update(FAST_HASHING, CHATPLANE_DATA_DIR=str(settings.data_dir))
    if settings.database_url:
        env["CHATPLANE_DATABASE_URL"] = settings.database_url
    return subprocess.run(
        [sys.executable, "-m", "chatplane", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def seed(settings: Settings, email: str = "owner@example.com") -> None:
    """Users, a key and conversations with messages, through the services where they exist."""
    await migrate.upgrade(settings.resolved_database_url)
    db = Database(create_engine(settings))
    try:
        auth = AuthService(db, settings, Passwords(settings), AuditLog(db))
        owner = await auth.create_user(email, "pass-word-1", role="admin")
        await auth.create_user("member-" + email, "pass-word-2")
        await auth.create_api_key(email, "laptop")
        now = datetime.now(UTC)
        async with db.session() as session:
            for n in range(3):
                conversation = Conversation(
                    id=new_id(), tenant_id=owner.tenant_id, user_id=owner.id,
                    title=f"chat {n}", model="mock-echo", created_at=now, updated_at=now,
                )  # fmt: skip
                session.add(conversation)
                await session.flush()
                for seq, role in enumerate(("user", "assistant", "user")):
                    session.add(
                        Message(
                            id=new_id(), conversation_id=conversation.id,
                            tenant_id=owner.tenant_id, seq=seq, role=role,
                            content=f"message {seq} of chat {n}: héllo ✓", created_at=now,
                        )
                    )  # fmt: skip
            await session.commit()
    finally:
        await db.close()


async def snapshot(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return {
                table: [
                    tuple(row)
                    for row in await connection.execute(text(f"SELECT * FROM {table} ORDER BY 1"))
                ]
                for table in TABLES
            }
    finally:
        await engine.dispose()


async def alter(database_url: str) -> None:
    """What happens after a backup: a conversation deleted, a user added."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM messages"))
            await connection.execute(text("DELETE FROM conversations"))
            await connection.execute(text("UPDATE users SET email = 'renamed-' || email"))
    finally:
        await engine.dispose()


def rewrite_archive(source: Path, target: Path, **manifest_changes: Any) -> None:
    """The same archive (checksums intact) with some manifest fields changed."""
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for member in old.getmembers():
            data = old.extractfile(member)
            assert data is not None
            body = data.read()
            if member.name == MANIFEST:
                body = json.dumps({**json.loads(body), **manifest_changes}).encode()
                member.size = len(body)
            new.addfile(member, io.BytesIO(body))


def flip_byte_in(archive: Path, member_name: str, target: Path) -> None:
    with tarfile.open(archive) as tar:
        offset = tar.getmember(member_name).offset_data + tar.getmember(member_name).size // 2
    data = bytearray(archive.read_bytes())
    data[offset] ^= 0x01
    target.write_bytes(bytes(data))


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# SQLite (embedded).


@pytest.fixture
async def embedded(tmp_path: Path) -> Settings:
    settings = make_settings(tmp_path / "data")
    await seed(settings)
    load_or_create_secret(settings.data_dir)
    uploads = settings.data_dir / "uploads" / "kb1"
    uploads.mkdir(parents=True)
    (uploads / "doc.txt").write_text("an uploaded document")
    return settings


async def test_sqlite_round_trip_through_the_cli(embedded: Settings, tmp_path: Path) -> None:
    url = embedded.resolved_database_url
    before = await snapshot(url)
    secret = (embedded.data_dir / "secret_key").read_text()
    assert len(before["messages"]) == 9
    assert len(before["api_keys"]) == 1

    made = chatplane(embedded, "backup", str(tmp_path / "backups"))
    assert made.returncode == 0, made.stderr
    archive = Path(made.stdout.strip())
    assert archive.parent == tmp_path / "backups"
    manifest = read_manifest(archive)
    assert manifest.shape == "embedded"
    assert manifest.schema_revision == migrate.head_revision()
    assert {f.name for f in manifest.files} == {
        "database.sqlite3",
        "secret_key",
        "uploads/kb1/doc.txt",
    }

    await alter(url)
    (embedded.data_dir / "secret_key").write_text("changed\n")
    (embedded.data_dir / "uploads" / "kb1" / "doc.txt").write_text("changed")
    altered = await snapshot(url)

    refused = chatplane(embedded, "restore", str(archive))
    assert refused.returncode == 1
    assert "--force" in refused.stderr
    assert await snapshot(url) == altered

    restored = chatplane(embedded, "restore", "--force", str(archive))
    assert restored.returncode == 0, restored.stderr
    assert "restored the embedded backup" in restored.stdout
    assert await snapshot(url) == before
    assert (embedded.data_dir / "secret_key").read_text() == secret
    assert (embedded.data_dir / "secret_key").stat().st_mode & 0o777 == 0o600
    assert (embedded.data_dir / "uploads" / "kb1" / "doc.txt").read_text() == "an uploaded document"
    assert not list(embedded.data_dir.glob(".chatplane-restore-*"))


async def test_sqlite_restore_into_an_empty_data_dir(embedded: Settings, tmp_path: Path) -> None:
    """Disaster recovery: a new host, nothing but the archive."""
    result = await create_backup(embedded, tmp_path / "backups")
    fresh = make_settings(tmp_path / "new-host")
    await restore_backup(fresh, result.path)
    assert await snapshot(fresh.resolved_database_url) == await snapshot(
        embedded.resolved_database_url
    )


async def test_sqlite_backup_is_online_and_consistent(embedded: Settings, tmp_path: Path) -> None:
    """A writer with an open transaction (a running server) neither blocks the backup nor
    leaks its uncommitted rows into it."""
    database = embedded.data_dir / "chatplane.db"
    writer = sqlite3.connect(database)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE users SET email = 'uncommitted-' || email")
    try:
        result = await create_backup(embedded, tmp_path / "backups")
    finally:
        writer.rollback()
        writer.close()
    fresh = make_settings(tmp_path / "elsewhere")
    await restore_backup(fresh, result.path)
    emails = {row[0] for row in sqlite3.connect(fresh.data_dir / "chatplane.db").execute(
        "SELECT email FROM users"
    )}  # fmt: skip
    assert emails == {"owner@example.com", "member-owner@example.com"}


async def test_sqlite_restore_refused_while_the_database_is_open(
    embedded: Settings, tmp_path: Path
) -> None:
    result = await create_backup(embedded, tmp_path / "backups")
    await alter(embedded.resolved_database_url)
    altered = await snapshot(embedded.resolved_database_url)
    server = sqlite3.connect(embedded.data_dir / "chatplane.db")
    server.execute("PRAGMA journal_mode=WAL")
    server.execute("SELECT count(*) FROM users").fetchone()
    try:
        with pytest.raises(BackupError, match="in use"):
            await restore_backup(embedded, result.path, force=True)
    finally:
        server.close()
    assert await snapshot(embedded.resolved_database_url) == altered


@pytest.mark.parametrize("damage", ["flip_database", "flip_manifest_entry", "truncate", "empty"])
async def test_damaged_archives_are_refused_and_nothing_changes(
    embedded: Settings, tmp_path: Path, damage: str
) -> None:
    archive = (await create_backup(embedded, tmp_path / "backups")).path
    bad = tmp_path / "bad.tar"
    if damage == "flip_database":
        flip_byte_in(archive, "database.sqlite3", bad)
    elif damage == "flip_manifest_entry":
        flip_byte_in(archive, "secret_key", bad)
    elif damage == "truncate":
        bad.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    else:
        bad.write_bytes(b"")
    await alter(embedded.resolved_database_url)
    altered = await snapshot(embedded.resolved_database_url)
    files_before = listing(embedded.data_dir)

    done = chatplane(embedded, "restore", "--force", str(bad))
    assert done.returncode == 1
    assert "damaged" in done.stderr or "truncated" in done.stderr or "readable" in done.stderr
    assert "Traceback" not in done.stderr
    with pytest.raises(ArchiveDamaged):
        await restore_backup(embedded, bad, force=True)
    assert await snapshot(embedded.resolved_database_url) == altered
    assert listing(embedded.data_dir) == files_before


async def test_newer_schema_revision_is_refused(embedded: Settings, tmp_path: Path) -> None:
    archive = (await create_backup(embedded, tmp_path / "backups")).path
    newer = tmp_path / "newer.tar"
    rewrite_archive(archive, newer, schema_revision="9999_from_the_future")
    done = chatplane(embedded, "restore", "--force", str(newer))
    assert done.returncode == 1
    assert "newer than this" in done.stderr
    newer_format = tmp_path / "newer-format.tar"
    rewrite_archive(archive, newer_format, format_version=2)
    with pytest.raises(BackupError, match="format version 2"):
        await restore_backup(embedded, newer_format, force=True)


async def test_shape_mismatch_is_refused(embedded: Settings, tmp_path: Path) -> None:
    archive = (await create_backup(embedded, tmp_path / "backups")).path
    scaled = make_settings(
        tmp_path / "scaled", database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none"
    )
    with pytest.raises(BackupError, match="configured for the scaled shape"):
        await restore_backup(scaled, archive, force=True)


async def test_keep_prunes_only_this_databases_archives(embedded: Settings, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    other = make_settings(tmp_path / "other")
    await seed(other, "other@example.com")
    foreign = (await create_backup(other, backups)).path
    (backups / "notes.tar").write_bytes(b"not an archive")
    renamed = backups / "friday.tar"
    (await create_backup(embedded, backups)).path.rename(renamed)  # named by hand
    made = [(await create_backup(embedded, backups, keep=2)).path for _ in range(3)]

    remaining = set(backups.iterdir())
    assert remaining == {foreign, backups / "notes.tar", made[1], made[2]}
    done = chatplane(embedded, "backup", str(backups), "--keep", "1")
    assert done.returncode == 0, done.stderr
    newest = Path(done.stdout.strip())
    assert set(backups.iterdir()) == {foreign, backups / "notes.tar", newest}
    assert "removed the older archive" in done.stderr


async def test_backup_never_overwrites(embedded: Settings, tmp_path: Path) -> None:
    target = tmp_path / "one.tar"
    await create_backup(embedded, target)
    with pytest.raises(BackupError, match="exists"):
        await create_backup(embedded, target)


# Postgres (scaled).


def _need_pg_tools() -> None:
    for tool in ("pg_dump", "pg_restore", "psql"):
        try:
            pg.find_tool(tool)
        except BackupError as exc:
            service_missing(tool, exc)


@pytest.fixture
async def scaled(tmp_path: Path) -> AsyncIterator[Settings]:
    _need_pg_tools()
    name = f"chatplane_backup_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    async with postgres_database(name) as url:
        settings = make_settings(tmp_path / "data", database_url=url)
        await seed(settings)
        yield settings


async def _execute(database_url: str, *statements: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_postgres_round_trip_through_the_cli(scaled: Settings, tmp_path: Path) -> None:
    url = scaled.resolved_database_url
    before = await snapshot(url)
    made = chatplane(scaled, "backup", str(tmp_path / "backups"))
    assert made.returncode == 0, made.stderr
    archive = Path(made.stdout.strip())
    manifest = read_manifest(archive)
    assert manifest.shape == "scaled"
    assert [f.name for f in manifest.files] == ["database.pgdump"]
    assert manifest.schema_revision == migrate.head_revision()

    await alter(url)
    # A table the backup does not know (as a newer migration would add) goes away too.
    await _execute(url, "CREATE TABLE stray (id int)", "INSERT INTO stray VALUES (1)")
    altered = await snapshot(url)
    refused = chatplane(scaled, "restore", str(archive))
    assert refused.returncode == 1
    assert "--force" in refused.stderr
    assert await snapshot(url) == altered

    restored = chatplane(scaled, "restore", "--force", str(archive))
    assert restored.returncode == 0, restored.stderr
    assert await snapshot(url) == before
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            stray = await connection.execute(text("SELECT to_regclass('public.stray')"))
            assert stray.scalar() is None
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_postgres_restore_into_a_fresh_migrated_database(
    scaled: Settings, tmp_path: Path
) -> None:
    """A migrated but empty database counts as empty: no --force needed."""
    archive = (await create_backup(scaled, tmp_path / "backups")).path
    async with postgres_database(f"chatplane_backup_{RUN_ID}_{uuid.uuid4().hex[:6]}") as url:
        fresh = make_settings(tmp_path / "fresh", database_url=url)
        await migrate.upgrade(url)
        await restore_backup(fresh, archive)
        assert await snapshot(url) == await snapshot(scaled.resolved_database_url)


@pytest.mark.postgres
async def test_postgres_failed_restore_changes_nothing(scaled: Settings, tmp_path: Path) -> None:
    """The restore fails late (a schema of the dump exists already on the target, outside
    `public`): its single transaction rolls back, the drops included."""
    url = scaled.resolved_database_url
    await _execute(url, "CREATE SCHEMA reports")
    archive = (await create_backup(scaled, tmp_path / "backups")).path
    await alter(url)
    altered = await snapshot(url)
    with pytest.raises(BackupError, match="rolled back, nothing changed"):
        await restore_backup(scaled, archive, force=True)
    assert await snapshot(url) == altered


@pytest.mark.postgres
async def test_postgres_damaged_archive_refused(scaled: Settings, tmp_path: Path) -> None:
    archive = (await create_backup(scaled, tmp_path / "backups")).path
    bad = tmp_path / "bad.tar"
    flip_byte_in(archive, "database.pgdump", bad)
    await alter(scaled.resolved_database_url)
    altered = await snapshot(scaled.resolved_database_url)
    done = chatplane(scaled, "restore", "--force", str(bad))
    assert done.returncode == 1
    assert "does not match its checksum" in done.stderr
    assert await snapshot(scaled.resolved_database_url) == altered


async def test_postgres_password_goes_through_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(pg, "find_tool", lambda name: f"/bin/{name}")
    monkeypatch.setattr(pg, "_run", lambda argv, env, what: seen.append((argv, env)) or "")
    url = "postgresql+asyncpg://app:s3cret-pw@db.internal:6543/chat?ssl=require"
    await pg.dump(url, tmp_path / "x.pgdump", {"PATH": "/usr/bin"})
    await pg.restore(url, tmp_path / "x.pgdump", tmp_path, {"PATH": "/usr/bin"})
    assert seen
    for argv, _ in seen:
        assert not any("s3cret-pw" in arg for arg in argv)
    env = seen[0][1]
    assert env["PGPASSWORD"] == "s3cret-pw"
    assert (env["PGHOST"], env["PGPORT"], env["PGUSER"], env["PGDATABASE"]) == (
        "db.internal", "6543", "app", "chat",
    )  # fmt: skip
    assert env["PGSSLMODE"] == "require"
    assert pg.describe(url) == "postgresql://db.internal:6543/chat"
