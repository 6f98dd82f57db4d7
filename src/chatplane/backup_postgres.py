"""pg_dump / pg_restore / psql for the scaled shape's backups.

The connection comes from CHATPLANE_DATABASE_URL and reaches the tools through libpq's
environment (PGHOST, PGUSER, PGPASSWORD, ...), never their arguments: a password on a command
line is visible to every user of the host in the process list.

Restore is atomic: `pg_restore` only turns the verified dump into a SQL script (it touches no
database), and `psql --single-transaction -v ON_ERROR_STOP=1` runs our prelude (drop every
object of the `public` schema) and that script as ONE transaction. Postgres DDL is
transactional, so either the whole restore commits or, on any error (or a lost connection),
nothing changed. We do not pipe pg_restore into psql: if pg_restore died midway, psql would
read end-of-input and commit a partial restore. A fresh database swapped in by renaming
was the other candidate; it needs CREATEDB, a connection to another database and no other
session on the target, which managed Postgres and a running cluster rarely allow.
(`pg_restore --single-transaction --clean` is atomic too, but drops only the objects the dump
holds, so a table from a newer migration would survive a restore of an older backup.)
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from chatplane.backup_archive import BackupError

# Lock waits while other sessions use the tables (a running chatplane) end the restore with a
# clear error instead of hanging.
LOCK_TIMEOUT = "15s"

# Drops every table, view, sequence, standalone type and routine of `public` that no
# extension owns: the restore then recreates exactly what the backup holds.
DROP_PUBLIC_SCHEMA_OBJECTS = f"""
SET lock_timeout = '{LOCK_TIMEOUT}';
DO $chatplane_restore$
DECLARE
    statement text;
BEGIN
    FOR statement IN
        SELECT format('DROP %s IF EXISTS %I.%I CASCADE',
                      CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                     WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
                      n.nspname, c.relname)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
        ORDER BY c.relkind = 'S'
    LOOP
        EXECUTE statement;
    END LOOP;
    FOR statement IN
        SELECT format('DROP TYPE IF EXISTS %I.%I CASCADE', n.nspname, t.typname)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r', 'm')
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = t.oid AND d.deptype = 'e')
    LOOP
        EXECUTE statement;
    END LOOP;
    FOR statement IN
        SELECT format('DROP ROUTINE IF EXISTS %s CASCADE', p.oid::regprocedure)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
    LOOP
        EXECUTE statement;
    END LOOP;
END
$chatplane_restore$;
"""


def find_tool(name: str) -> str:
    """A PostgreSQL client program: on PATH, else the newest under /usr/lib/postgresql."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    if candidates:
        return max(candidates, key=_major_version)
    raise BackupError(
        f"{name} is not installed: install the PostgreSQL client programs "
        "(Debian/Ubuntu: apt-get install postgresql-client, of the server's major version "
        "or newer)"
    )


def _major_version(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


def libpq_env(database_url: str, base: dict[str, str]) -> dict[str, str]:
    """The environment that points libpq at the database of `database_url`."""
    url = make_url(database_url)
    env = dict(base)
    query = {key: str(value) for key, value in url.query.items()}
    host = url.host or query.get("host")
    if host:
        env["PGHOST"] = host
    if url.port:
        env["PGPORT"] = str(url.port)
    if url.username:
        env["PGUSER"] = url.username
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    if url.database:
        env["PGDATABASE"] = url.database
    sslmode = query.get("sslmode") or query.get("ssl")
    if sslmode in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
        env["PGSSLMODE"] = sslmode
    env["PGAPPNAME"] = "chatplane-backup"
    return env


def describe(database_url: str) -> str:
    """host:port/database, to name the source in a manifest (no user, no password)."""
    url: URL = make_url(database_url)
    return f"postgresql://{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def _run(argv: list[str], env: dict[str, str], what: str) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        raise BackupError(f"{what} failed: {' / '.join(detail[-5:]) or done.returncode}")
    return done.stdout


async def dump(database_url: str, target: Path, env: dict[str, str]) -> None:
    argv = [find_tool("pg_dump"), "--format=custom", "--no-password", f"--file={target}"]
    await asyncio.to_thread(_run, argv, libpq_env(database_url, env), "pg_dump")


async def check_dump(archive: Path, env: dict[str, str]) -> None:
    """pg_restore can read the dump (its table of contents)."""
    argv = [find_tool("pg_restore"), "--list", str(archive)]
    await asyncio.to_thread(_run, argv, env, "pg_restore --list")


async def restore(database_url: str, archive: Path, scratch: Path, env: dict[str, str]) -> None:
    """Replace the database's `public` schema with the dump, in one transaction."""
    pg_restore, psql = find_tool("pg_restore"), find_tool("psql")
    script = scratch / "restore.sql"
    prelude = scratch / "prelude.sql"
    prelude.write_text(DROP_PUBLIC_SCHEMA_OBJECTS)
    # --no-owner/--no-privileges: the objects belong to the restoring role, so a backup
    # restores onto another cluster whose role names differ.
    await asyncio.to_thread(
        _run,
        [pg_restore, "--no-owner", "--no-privileges", f"--file={script}", str(archive)],
        env,
        "pg_restore",
    )
    psql_argv = [
        psql, "--no-psqlrc", "--quiet", "--no-password", "--single-transaction",
        "--set=ON_ERROR_STOP=1", f"--file={prelude}", f"--file={script}",
    ]  # fmt: skip
    await asyncio.to_thread(
        _run, psql_argv, libpq_env(database_url, env), "the restore (rolled back, nothing changed)"
    )


async def has_data(database_url: str) -> bool:
    """Any row in a table of `public` other than Alembic's bookkeeping."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            tables = (
                await connection.execute(
                    text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                        "AND tablename <> 'alembic_version'"
                    )
                )
            ).scalars()
            for table in list(tables):
                quoted = '"' + table.replace('"', '""') + '"'
                if (
                    await connection.execute(text(f"SELECT EXISTS (SELECT 1 FROM public.{quoted})"))
                ).scalar():
                    return True
            return False
    finally:
        await engine.dispose()


def environment() -> dict[str, str]:
    """The process environment the tools inherit (PATH, locale, a .pgpass location)."""
    return dict(os.environ)
