"""Shared fixtures: settings for tests, real databases, and live servers.

Tests that need PostgreSQL or Redis skip with a reason when the service is unreachable,
except under CI (`CI` set), where they fail instead."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chatplane.settings import Settings
from tests.own_redis import OwnRedis
from tests.scale.procs import free_port

PG_ADMIN_DSN = os.environ.get("CHATPLANE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("CHATPLANE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]

pytest_plugins = ["tests.chromium", "tests.watchdog"]


def service_missing(what: str, error: BaseException) -> None:
    """Skip on a laptop without the service; fail under CI, where it must be there."""
    message = f"{what} is unreachable ({error.__class__.__name__}: {error})"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI requires it")
    pytest.skip(message)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "secret_key": "test-secret-key-for-this-run-" + RUN_ID * 2,
        "password_time_cost": 1,
        "password_memory_kib": 1024,
        "password_parallelism": 1,
        "sse_keepalive_s": 1.0,
        # The limits stay on (every request goes through them) but far above what a test
        # sends; the limit tests set their own.
        "rate_limit_key_rpm": 100_000,
        "rate_limit_user_rpm": 100_000,
        "rate_limit_ip_rpm": 100_000,
        "rate_limit_ip_zones": {},
        # The suites' servers share the run's Postgres database, each with a broker of its
        # own: several deployments on one database, which the turn sweeper does not support
        # (each would take the others' running turns for lost). Its tests turn it on.
        "turn_sweep_interval_s": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def postgres_database(name: str) -> AsyncIterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        service_missing("PostgreSQL at " + PG_ADMIN_DSN, exc)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A database of its own for this test run, dropped at the end."""
    async with postgres_database(f"chatplane_test_{RUN_ID}") as url:
        yield url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A Redis server of the test's own, started; stopped at the end."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis = OwnRedis(free_port(), tmp_path)
    redis.start()
    yield redis
    redis.stop()
