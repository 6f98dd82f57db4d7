"""`chatplane backup` and `chatplane restore`, for both shapes.

Embedded: SQLite's online backup API copies a consistent snapshot while the server runs
(WAL readers never block writers), plus the data dir's secret key file and its `uploads/` or
`blobs/` directory when present. Scaled: `pg_dump --format=custom` (see backup_postgres).
Both end up in one tar with a manifest (backup_archive).

A restore proves the archive whole (manifest, every checksum, the shape, a schema revision
this code knows, the staged database readable) before it changes anything, refuses to
replace a database that holds data unless forced, and swaps the database in atomically:
SQLite by renaming a fully written file over the old one, Postgres in one transaction.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from chatplane import __version__
from chatplane import backup_postgres as pg
from chatplane.backup_archive import (
    SUFFIX,
    ArchiveDamaged,
    BackupError,
    Manifest,
    fsync_dir,
    hash_file,
    read_manifest,
    verify_and_extract,
    write_archive,
)
from chatplane.db import migrate
from chatplane.db.engine import sqlite_file
from chatplane.settings import SECRET_KEY_FILE, Settings

SQLITE_MEMBER = "database.sqlite3"
PG_MEMBER = "database.pgdump"
# Directories of the data dir that hold user files (uploaded documents, blobs).
FILE_DIRS = ("uploads", "blobs")

__all__ = [
    "ArchiveDamaged",
    "BackupError",
    "BackupResult",
    "RestoreResult",
    "create_backup",
    "prune",
    "restore_backup",
]


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: Manifest
    pruned: list[Path]


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    head_revision: str | None

    @property
    def needs_upgrade(self) -> bool:
        return self.manifest.schema_revision != self.head_revision


def shape_of(settings: Settings) -> str:
    return "embedded" if settings.is_embedded_db else "scaled"


def _sqlite_path(settings: Settings) -> Path:
    path = sqlite_file(settings.resolved_database_url)
    if path is None:
        raise BackupError("an in-memory SQLite database cannot be backed up")
    return path.resolve()


def _source(settings: Settings) -> str:
    if settings.is_embedded_db:
        return f"sqlite://{_sqlite_path(settings)}"
    return pg.describe(settings.resolved_database_url)


# Backup.


async def create_backup(settings: Settings, path: Path, *, keep: int | None = None) -> BackupResult:
    if keep is not None and keep < 1:
        raise BackupError("--keep needs at least 1")
    now = datetime.now(UTC)
    shape = shape_of(settings)
    destination = _destination(path, shape, now)
    staging = Path(tempfile.mkdtemp(prefix=".chatplane-backup-", dir=destination.parent))
    try:
        if settings.is_embedded_db:
            sources, revision = await _stage_sqlite(settings, staging)
        else:
            sources, revision = await _stage_postgres(settings, staging)
        sources.update(_data_files(settings.data_dir))
        files = []
        for name, source in sorted(sources.items()):
            digest = await asyncio.to_thread(hash_file, source)
            files.append(replace(digest, name=name))
        manifest = Manifest(
            shape=shape,
            schema_revision=revision,
            chatplane_version=__version__,
            created_at=now,
            source=_source(settings),
            files=tuple(files),
        )
        await asyncio.to_thread(write_archive, destination, manifest, sources)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    pruned = prune(destination.parent, manifest.source, keep) if keep is not None else []
    return BackupResult(destination, manifest, pruned)


def _destination(path: Path, shape: str, now: datetime) -> Path:
    """A directory (existing, or a path without the .tar suffix) gets a dated archive; a
    `.tar` path is the archive itself, never overwritten."""
    if path.is_dir() or (not path.exists() and path.suffix != SUFFIX):
        path.mkdir(parents=True, exist_ok=True)
        stamp = f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z"
        path = path / f"chatplane-{shape}-{stamp}{SUFFIX}"
    if path.exists():
        raise BackupError(f"{path} exists: name a new archive or a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.resolve()


async def _stage_sqlite(settings: Settings, staging: Path) -> tuple[dict[str, Path], str]:
    database = _sqlite_path(settings)
    if not database.exists():
        raise BackupError(f"there is no database at {database}: nothing to back up")
    copy = staging / SQLITE_MEMBER
    revision = await asyncio.to_thread(_sqlite_online_copy, database, copy)
    sources = {SQLITE_MEMBER: copy}
    secret = settings.data_dir / SECRET_KEY_FILE
    if secret.is_file():
        sources[SECRET_KEY_FILE] = secret
    return sources, revision


def _sqlite_online_copy(database: Path, copy: Path) -> str:
    """SQLite's backup API in one step: one read transaction, so one consistent snapshot,
    taken while the server goes on writing (WAL)."""
    source = sqlite3.connect(database, timeout=30)
    target = sqlite3.connect(copy)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        return _sqlite_revision(target)
    finally:
        target.close()
        source.close()


def _sqlite_revision(connection: sqlite3.Connection) -> str:
    try:
        revision = migrate.recorded_revision(connection)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"the database has no chatplane schema ({exc})") from exc
    if revision is None:
        raise BackupError("the database has no schema revision: run `chatplane db upgrade`")
    return revision


async def _stage_postgres(settings: Settings, staging: Path) -> tuple[dict[str, Path], str]:
    url = settings.resolved_database_url
    before = await migrate.current_revision(url)
    if before is None:
        raise BackupError("the database has no schema revision: run `chatplane db upgrade`")
    copy = staging / PG_MEMBER
    await pg.dump(url, copy, pg.environment())
    # pg_dump reads one snapshot; a migration that ran meanwhile would make the manifest lie.
    if await migrate.current_revision(url) != before:
        raise BackupError("a migration ran during the backup: take it again")
    return {PG_MEMBER: copy}, before


def _data_files(data_dir: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for directory in FILE_DIRS:
        root = data_dir / directory
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                files[path.relative_to(data_dir).as_posix()] = path
    return files


# Retention.


def prune(directory: Path, source: str, keep: int) -> list[Path]:
    """Delete all but the `keep` newest archives of `source` in `directory`. An archive is
    recognised by its manifest, whatever its name; other files are never touched."""
    found: list[tuple[datetime, str, Path]] = []
    for candidate in directory.iterdir():
        if candidate.name.startswith(".") or not candidate.is_file():
            continue
        try:
            manifest = read_manifest(candidate)
        except BackupError:
            continue
        if manifest.source == source:
            found.append((manifest.created_at, candidate.name, candidate))
    found.sort(reverse=True)
    doomed = [path for *_, path in found[keep:]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


# Restore.


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config(""))
    return {revision.revision for revision in script.walk_revisions()}


def check_manifest(manifest: Manifest, settings: Settings) -> None:
    shape = shape_of(settings)
    if manifest.shape != shape:
        database = "SQLite" if manifest.shape == "embedded" else "Postgres"
        raise BackupError(
            f"the archive holds a {manifest.shape} ({database}) backup; this chatplane is "
            f"configured for the {shape} shape"
        )
    if manifest.schema_revision not in known_revisions():
        raise BackupError(
            f"the archive's schema revision {manifest.schema_revision} is newer than this "
            f"chatplane {__version__} knows (head {migrate.head_revision()}): restore it with "
            f"chatplane {manifest.chatplane_version} or newer"
        )
    wanted = PG_MEMBER if shape == "scaled" else SQLITE_MEMBER
    if wanted not in {f.name for f in manifest.files}:
        raise ArchiveDamaged(f"the archive has no {wanted}")


async def restore_backup(settings: Settings, path: Path, *, force: bool = False) -> RestoreResult:
    manifest = await asyncio.to_thread(read_manifest, path)
    check_manifest(manifest, settings)
    if settings.is_embedded_db:
        await _restore_sqlite(settings, path, force=force)
    else:
        await _restore_postgres(settings, path, force=force)
    return RestoreResult(manifest, migrate.head_revision())


async def _restore_sqlite(settings: Settings, path: Path, *, force: bool) -> None:
    database = _sqlite_path(settings)
    database.parent.mkdir(parents=True, exist_ok=True)
    # Staged beside the database: the final rename stays on one file system (atomic).
    staging = Path(tempfile.mkdtemp(prefix=".chatplane-restore-", dir=database.parent))
    try:
        manifest, files = await asyncio.to_thread(verify_and_extract, path, staging)
        staged = files[SQLITE_MEMBER]
        await asyncio.to_thread(_check_staged_sqlite, staged, manifest.schema_revision)
        if not force and await asyncio.to_thread(_sqlite_has_data, database):
            raise BackupError(
                f"{database} holds data: restore with --force to replace it "
                "(back it up first if it matters)"
            )
        # Everything is verified; from here on the live data changes.
        await asyncio.to_thread(_swap_sqlite, staged, database)
        await asyncio.to_thread(_install_data_files, files, settings.data_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_staged_sqlite(staged: Path, revision: str) -> None:
    connection = sqlite3.connect(staged)
    try:
        result = connection.execute("PRAGMA integrity_check").fetchone()
        if result is None or result[0] != "ok":
            raise ArchiveDamaged(f"the archived database fails its integrity check: {result}")
        if _sqlite_revision(connection) != revision:
            raise ArchiveDamaged("the archived database is not at the manifest's revision")
    except sqlite3.DatabaseError as exc:
        raise ArchiveDamaged(f"the archived database is unreadable ({exc})") from exc
    finally:
        connection.close()


def _sqlite_has_data(database: Path) -> bool:
    if not database.exists():
        return False
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' AND name <> 'alembic_version'"
            )
        ]
        quoted = ('"' + table.replace('"', '""') + '"' for table in tables)
        return any(
            connection.execute(f"SELECT EXISTS (SELECT 1 FROM {q})").fetchone()[0] for q in quoted
        )
    finally:
        connection.close()


def _swap_sqlite(staged: Path, database: Path) -> None:
    """Rename the verified file over the database: readers see the old file or the new one,
    never a mix, and a crash leaves one of the two whole.

    First the old database leaves WAL mode. That checkpoints and deletes its `-wal` and
    `-shm` files, which SQLite would otherwise replay into the new file (corrupting it), and
    it needs exclusive access: it fails while a chatplane process has the database open,
    which is how a restore under a running server is refused."""
    if database.exists():
        connection = sqlite3.connect(database, timeout=1)
        try:
            mode = connection.execute("PRAGMA journal_mode=DELETE").fetchone()
        except sqlite3.OperationalError as exc:
            raise BackupError(
                f"{database} is in use ({exc}): stop chatplane (serve, and anything else that "
                "opened it) before restoring"
            ) from exc
        finally:
            connection.close()
        if mode is None or str(mode[0]).lower() != "delete":
            raise BackupError(f"{database} is in use: stop chatplane before restoring")
        staged.chmod(database.stat().st_mode & 0o777)
    else:
        staged.chmod(0o600)
    with staged.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(staged, database)
    fsync_dir(database.parent)


def _install_data_files(files: dict[str, Path], data_dir: Path, staging: Path) -> None:
    """The secret key and file directories, each replaced by one rename."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if SECRET_KEY_FILE in files:
        secret = files[SECRET_KEY_FILE]
        secret.chmod(0o600)
        os.replace(secret, data_dir / SECRET_KEY_FILE)
    for directory in FILE_DIRS:
        if not any(name.startswith(directory + "/") for name in files):
            continue
        fresh = staging / "files" / directory
        live = data_dir / directory
        if live.exists():
            os.replace(live, staging / f"previous-{directory}")
        os.replace(fresh, live)
    fsync_dir(data_dir)


async def _restore_postgres(settings: Settings, path: Path, *, force: bool) -> None:
    url = settings.resolved_database_url
    env = pg.environment()
    for tool in ("pg_restore", "psql"):
        pg.find_tool(tool)  # a clear error before any work
    with tempfile.TemporaryDirectory(prefix="chatplane-restore-") as scratch:
        staging = Path(scratch)
        manifest, files = await asyncio.to_thread(verify_and_extract, path, staging)
        await pg.check_dump(files[PG_MEMBER], env)
        if not force and await pg.has_data(url):
            raise BackupError(
                "the database holds data: restore with --force to replace it "
                "(back it up first if it matters)"
            )
        await pg.restore(url, files[PG_MEMBER], staging, env)
        restored = await migrate.current_revision(url)
        if restored != manifest.schema_revision:
            raise BackupError(
                f"after the restore the database is at revision {restored}, not "
                f"{manifest.schema_revision}"
            )
        await asyncio.to_thread(_install_data_files, files, settings.data_dir, staging)
