"""Engine and session factory for SQLite (embedded) and Postgres (scaled)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from chatplane.errors import DatabaseUnavailable
from chatplane.observability.metrics import db_unavailable, watch_pool
from chatplane.settings import Settings

# What a refused request tells its client to wait before sending it again.
RETRY_AFTER_S = 3
# A readiness probe gives up on the database after this.
PING_TIMEOUT_S = 2.0


def sqlite_file(url: str) -> Path | None:
    """The file an SQLite URL names; None for another database or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def ensure_sqlite_dir(url: str) -> None:
    """SQLite creates the file but not its folder."""
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def create_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    url = url or settings.resolved_database_url
    # Statement parameters (message text, emails) stay out of error messages and
    # tracebacks unless content logging is on.
    hide_parameters = not settings.log_content
    if make_url(url).get_backend_name() == "sqlite":
        ensure_sqlite_dir(url)
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, hide_parameters=hide_parameters
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=1800,
        hide_parameters=hide_parameters,
        connect_args={
            "timeout": settings.db_connect_timeout_s,
            "command_timeout": settings.db_command_timeout_s,
        },
    )
    event.listen(engine.sync_engine, "checkout", _replace_closed)
    return engine


def _replace_closed(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """A pooled connection the server closed or reset (a restart, a failover, a proxy that
    cut it) is replaced at checkout without a round trip: asyncpg marks it closed as soon as
    its socket ends. (`pool_pre_ping` would ask the server on every checkout: three round
    trips on asyncpg, BEGIN, a query and ROLLBACK.) A connection that dies while in use
    fails its statement as an outage, and SQLAlchemy then retires every connection pooled
    before it."""
    if record.driver_connection.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def is_outage(exc: BaseException) -> bool:
    """Connection loss, time-outs and lock time-outs are retryable; constraint errors are
    not."""
    if isinstance(exc, OSError | OperationalError | PoolTimeout):
        return True  # OSError covers refused, reset and TimeoutError
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _outage_reason(exc: BaseException) -> str:
    """A short, stable word for the readiness check, the metric and the problem."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "refused"
        if isinstance(seen, TimeoutError | PoolTimeout):
            return "timeout"
        seen = seen.__cause__ or seen.__context__
    return "lost"


REASON_TEXT = {
    "refused": "connection refused",
    "timeout": "no answer in time",
    "lost": "connection lost",
}


def database_unavailable(reason: str) -> DatabaseUnavailable:
    db_unavailable(reason)
    return DatabaseUnavailable(
        f"The database is unreachable ({REASON_TEXT.get(reason, reason)}); this is "
        "temporary, retry in a few seconds",
        retry_after=RETRY_AFTER_S,
    )


class Database:
    """Owns the engine and hands out sessions; the caller owns the transaction.

    Every way of losing the database (refused, reset mid-query, a dead pooled connection,
    a time-out) leaves a session as `DatabaseUnavailable`: a 503 with Retry-After."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        # On SQLite a read starts no transaction anyway, and switching a connection to
        # autocommit and back would cost a PRAGMA.
        self._one_read_sessions = (
            self.sessions
            if engine.dialect.name == "sqlite"
            else async_sessionmaker(
                engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
            )
        )
        watch_pool(engine)

    def session(self) -> AbstractAsyncContextManager[AsyncSession]:
        return _outages_mapped(self.sessions)

    def one_read(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session for ONE reading statement, outside a transaction: on Postgres no BEGIN
        before it and no ROLLBACK after it, two round trips fewer (on SQLite: `session()`).
        Several statements in it would each see the database at their own moment, and
        nothing written commits as a unit: use `session()` for those."""
        return _outages_mapped(self._one_read_sessions)

    async def ping(self, *, timeout_s: float = PING_TIMEOUT_S) -> None:
        """Raise `DatabaseUnavailable` unless the database answers within `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s), self.session() as session:
                await session.execute(text("SELECT 1"))
        except TimeoutError as exc:
            raise database_unavailable("timeout") from exc

    async def close(self) -> None:
        await self.engine.dispose()


@asynccontextmanager
async def _outages_mapped(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    try:
        async with sessions() as session:
            yield session
    except (DBAPIError, OSError, PoolTimeout) as exc:
        if not is_outage(exc):
            raise
        raise database_unavailable(_outage_reason(exc)) from exc
