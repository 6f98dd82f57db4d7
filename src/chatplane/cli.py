"""The `chatplane` command line (`python -m chatplane` is the same)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from chatplane import __version__
from chatplane.errors import ChatplaneError
from chatplane.settings import Settings

if TYPE_CHECKING:
    from chatplane.auth.service import AuthService

T = TypeVar("T")
# prometheus-client's multi-process switch, read when it is first imported.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

cli = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold secrets
    help="chatplane: a self-hosted AI chat platform.",
)
db_cli = typer.Typer(no_args_is_help=True, help="Database schema.")
users_cli = typer.Typer(no_args_is_help=True, help="Users.")
keys_cli = typer.Typer(no_args_is_help=True, help="API keys.")
ops_cli = typer.Typer(no_args_is_help=True, help="Operate a running server (its /api/ops).")
cli.add_typer(db_cli, name="db")
cli.add_typer(users_cli, name="users")
cli.add_typer(keys_cli, name="keys")
cli.add_typer(ops_cli, name="ops")


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def load_settings() -> Settings:
    """Settings from the environment; logs go to stderr, so stdout carries only results."""
    from chatplane.observability.logging import configure_logging

    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CHATPLANE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise fail(f"invalid configuration: {problems}", 2) from exc
    configure_logging(settings)
    return settings


def start_error_tracking(settings: Settings, *, in_this_process: bool = True) -> None:
    """Report errors from this process when CHATPLANE_SENTRY_DSN is set (or only check that
    the processes it starts can); exit with the extra to install when the SDK is missing."""
    if not settings.sentry_dsn:
        return
    from chatplane.observability.error_tracking import check_error_tracking, init_error_tracking

    try:
        if in_this_process:
            init_error_tracking(settings)
        else:
            check_error_tracking(settings)
    except ChatplaneError as exc:
        raise fail(exc.detail, 2) from exc


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except ChatplaneError as exc:
        raise fail(exc.detail) from exc
    except (DBAPIError, OSError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise fail(f"cannot use the database: {reason}") from exc


@asynccontextmanager
async def _auth(settings: Settings) -> AsyncIterator[AuthService]:
    from chatplane.auth.audit import AuditLog
    from chatplane.auth.secrets import Passwords
    from chatplane.auth.service import AuthService
    from chatplane.db import migrate
    from chatplane.db.engine import Database, create_engine

    if settings.is_embedded_db:
        await migrate.upgrade(settings.resolved_database_url)
    db = Database(create_engine(settings))
    try:
        yield AuthService(db, settings, Passwords(settings), AuditLog(db))
    finally:
        await db.close()


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@cli.command()
def serve(
    host: str | None = typer.Option(None, help="Bind address [CHATPLANE_HOST]"),
    port: int | None = typer.Option(None, help="Port [CHATPLANE_PORT]"),
    workers: int = typer.Option(
        1,
        "--workers",
        min=0,
        max=64,
        help="API processes, 0: one per CPU core (more than 1 needs Redis)",
    ),
) -> None:
    """Run the platform: web app, chat API and the /v1 gateway."""
    # Only the N server processes keep metrics in files; this one and its helpers do not.
    metrics_dir = os.environ.pop(MULTIPROC_DIR_ENV, None)
    from chatplane.process import APP_FACTORY, become, uvicorn_options

    settings = load_settings()
    bind_host = host or settings.host
    bind_port = port if port is not None else settings.port
    workers = workers or usable_cores()
    # The server processes report on their own (`serve_app`); this one only checks.
    start_error_tracking(settings, in_this_process=False)
    if workers > 1 and not settings.redis_url:
        raise fail(
            "--workers above 1 needs CHATPLANE_REDIS_URL: the processes share turns and "
            "their events through Redis",
            2,
        )
    # The embedded SQLite is migrated; Postgres is migrated once per deploy (`db upgrade`)
    # and only checked here. (Alembic stays out of the server: this process hands itself
    # over to a fresh interpreter, and `--workers N` starts fresh ones.)
    if settings.is_embedded_db:
        _upgrade_database(settings, "head")
    else:
        _check_database(settings)
    has_users = run(_has_users(settings))
    typer.echo(f"chatplane {__version__} on http://{bind_host}:{bind_port}")
    typer.echo(f"data: {settings.data_dir.resolve()}  database: {_safe_url(settings)}")
    if not has_users:
        typer.echo("No users yet. Create the first admin with:")
        typer.echo("  chatplane users create you@example.com --admin")
    if workers == 1:
        become("serve", bind_host, str(bind_port))
    import uvicorn

    with _shared_metrics_dir(metrics_dir):
        # Each process builds its own app from the same environment.
        uvicorn.run(APP_FACTORY, workers=workers, **uvicorn_options(settings, bind_host, bind_port))


@contextmanager
def _shared_metrics_dir(given: str | None) -> Iterator[None]:
    """The processes of `serve --workers N` keep their metrics in files of one directory
    (prometheus-client's multi-process mode), so any of them serves the sums: the directory
    named by PROMETHEUS_MULTIPROC_DIR, emptied, or else a fresh one removed at the end. Set
    before the processes start, since prometheus-client reads it when first imported."""
    import shutil
    import tempfile

    from chatplane.observability.exposition import prepare_multiprocess_dir

    directory = given or tempfile.mkdtemp(prefix="chatplane-metrics-")
    prepare_multiprocess_dir(directory)
    os.environ[MULTIPROC_DIR_ENV] = directory
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)
            del os.environ[MULTIPROC_DIR_ENV]


@cli.command()
def worker(
    concurrency: int | None = typer.Option(
        None, min=1, help="Turns run at once [CHATPLANE_TURN_CONCURRENCY]"
    ),
    metrics_port: int | None = typer.Option(
        None, min=0, max=65535, help="GET /metrics port, 0: off [CHATPLANE_WORKER_METRICS_PORT]"
    ),
) -> None:
    """Run turns from the Redis queue (the scaled shape); SIGTERM drains it."""
    os.environ.pop(MULTIPROC_DIR_ENV, None)  # one process: its metrics stay in memory
    from chatplane.process import become

    settings = load_settings()
    if not settings.redis_url:
        raise fail("the worker takes turns from Redis: set CHATPLANE_REDIS_URL", 2)
    start_error_tracking(settings, in_this_process=False)  # the worker process reports
    # The options are these settings (the same bounds), for the process it becomes.
    if concurrency is not None:
        os.environ["CHATPLANE_TURN_CONCURRENCY"] = str(concurrency)
    if metrics_port is not None:
        os.environ["CHATPLANE_WORKER_METRICS_PORT"] = str(metrics_port)
    become("worker")


async def _has_users(settings: Settings) -> bool:
    from chatplane.auth.repository import AuthRepository
    from chatplane.db.engine import Database, create_engine

    db = Database(create_engine(settings))
    try:
        async with db.session() as session:
            return await AuthRepository(session).has_users()
    finally:
        await db.close()


def _safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)


@db_cli.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply the schema migrations (run once per deploy in the scaled shape)."""
    _upgrade_database(load_settings(), revision)


@db_cli.command("check")
def db_check() -> None:
    """Exit 0 when the database schema is up to date, 1 when it needs `db upgrade`."""
    _check_database(load_settings())


def _upgrade_database(settings: Settings, revision: str) -> None:
    from chatplane.db import migrate

    async def upgrade() -> str | None:
        await migrate.upgrade(settings.resolved_database_url, revision)
        return await migrate.current_revision(settings.resolved_database_url)

    current = run(upgrade())
    typer.echo(f"database at revision {current}")


def _check_database(settings: Settings) -> None:
    from chatplane.db import migrate

    current = run(migrate.current_revision(settings.resolved_database_url))
    head = migrate.head_revision()
    if current != head:
        raise fail(f"the database is at revision {current}, not {head}: run `chatplane db upgrade`")
    typer.echo(f"database at revision {current} (up to date)")


@users_cli.command("create")
def users_create(
    email: str,
    admin: bool = typer.Option(False, "--admin", help="Make the user an admin of the tenant"),
    tenant: str = typer.Option("default", help="Tenant slug (created when new)"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password"),
) -> None:
    """Create a user with a password."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    settings = load_settings()

    async def create() -> tuple[str, str]:
        async with _auth(settings) as auth:
            user = await auth.create_user(
                email, password, tenant_slug=tenant, role="admin" if admin else "member"
            )
            return user.email, user.role

    created_email, role = run(create())
    typer.echo(f"created {created_email} ({role}, tenant {tenant})")


@keys_cli.command("create")
def keys_create(
    email: str,
    name: str = typer.Option(..., "--name", help="A name to recognise the key by"),
    rpm: int | None = typer.Option(None, "--rpm", min=1, help="Requests per minute"),
    budget_usd: float | None = typer.Option(None, "--budget-usd", min=0.0, help="Budget"),
    scope: list[str] = typer.Option(
        ["chat"], "--scope", help="chat (chat API and /v1) or admin; repeat for both"
    ),
) -> None:
    """Create an API key; it is printed once, alone on its line."""
    settings = load_settings()

    async def create() -> str:
        async with _auth(settings) as auth:
            _, plaintext = await auth.create_api_key(
                email, name, rpm=rpm, budget_usd=budget_usd, scopes=frozenset(scope)
            )
            return plaintext

    typer.echo(run(create()))


OpsUrl = typer.Option(None, "--url", help="The server [http://CHATPLANE_HOST:CHATPLANE_PORT]")
OpsToken = typer.Option(None, "--token", help="The ops token [CHATPLANE_OPS_TOKEN]")
OpsJson = typer.Option(False, "--json", help="Print the server's JSON answer as it is")


def _ops_call(url: str | None, token: str | None, method: str, path: str) -> Any:
    """Call a running server's operations API; a clear message and exit 1 when it fails."""
    from chatplane.ops.remote import OpsCallFailed, call_ops

    settings = load_settings()
    if url is None:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        url = f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"
    if token is None and settings.ops_token is not None:
        token = settings.ops_token.get_secret_value()
    try:
        return call_ops(url, token, method, path)
    except OpsCallFailed as exc:
        raise fail(str(exc)) from exc


def _ops_show(answer: Any, as_json: bool, view: str) -> None:
    """The answer as JSON, or as tables and lines (Rich, loaded only here)."""
    if as_json:
        import json

        typer.echo(json.dumps(answer, indent=2))
        return
    from chatplane.ops import render

    views = {
        "status": render.print_status,
        "drain": render.print_drain_state,
        "dead-letters": render.print_dead_letters,
    }
    views[view](answer)


@ops_cli.command("status")
def ops_status(
    url: str | None = OpsUrl, token: str | None = OpsToken, as_json: bool = OpsJson
) -> None:
    """The deployment at a glance: processes, queue, turns, database and Redis."""
    _ops_show(_ops_call(url, token, "GET", "/api/ops/status"), as_json, "status")


@ops_cli.command("drain")
def ops_drain(
    url: str | None = OpsUrl, token: str | None = OpsToken, as_json: bool = OpsJson
) -> None:
    """Drain the process that answers (behind a load balancer: the one it picks)."""
    _ops_show(_ops_call(url, token, "POST", "/api/ops/drain"), as_json, "drain")


@ops_cli.command("undrain")
def ops_undrain(
    url: str | None = OpsUrl, token: str | None = OpsToken, as_json: bool = OpsJson
) -> None:
    """Take the process that answers back into service."""
    _ops_show(_ops_call(url, token, "POST", "/api/ops/undrain"), as_json, "drain")


@ops_cli.command("dead-letters")
def ops_dead_letters(
    url: str | None = OpsUrl,
    token: str | None = OpsToken,
    as_json: bool = OpsJson,
    limit: int = typer.Option(100, min=1, max=1000, help="At most this many, newest first"),
) -> None:
    """Jobs that failed on every attempt."""
    _ops_show(
        _ops_call(url, token, "GET", f"/api/ops/dead-letters?limit={limit}"),
        as_json,
        "dead-letters",
    )


@cli.command()
def backup(
    path: Path = typer.Argument(..., help="A directory (a dated archive goes in it) or a .tar"),
    keep: int | None = typer.Option(
        None, "--keep", min=1, help="Then keep only the N newest archives of this database there"
    ),
) -> None:
    """Back up the database (online), the secret key file and uploads into one archive."""
    from chatplane.backup import create_backup

    result = run(create_backup(load_settings(), path, keep=keep))
    manifest = result.manifest
    typer.echo(
        f"backed up the {manifest.shape} database at revision {manifest.schema_revision} "
        f"({len(manifest.files)} files)",
        err=True,
    )
    for pruned in result.pruned:
        typer.echo(f"removed the older archive {pruned}", err=True)
    typer.echo(str(result.path))


@cli.command()
def restore(
    path: Path = typer.Argument(..., help="An archive made by `chatplane backup`"),
    force: bool = typer.Option(False, "--force", help="Replace a database that holds data"),
) -> None:
    """Restore an archive, verified first; stop chatplane before (SQLite refuses otherwise)."""
    from chatplane.backup import restore_backup

    result = run(restore_backup(load_settings(), path, force=force))
    manifest = result.manifest
    typer.echo(
        f"restored the {manifest.shape} backup of {manifest.created_at:%Y-%m-%d %H:%M:%S} UTC "
        f"at revision {manifest.schema_revision}"
    )
    if result.needs_upgrade:
        typer.echo(f"this chatplane is at {result.head_revision}: run `chatplane db upgrade`")


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    cli()
