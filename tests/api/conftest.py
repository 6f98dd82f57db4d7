from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.api.live import LiveServer, start_live_server
from tests.broker.support import REDIS_URL, delete_keys, require_redis, unique_prefix
from tests.conftest import make_settings
from tests.providers.fakes import FakeOpenAI

MOCK_CHUNK_DELAY_MS = 5.0


@dataclass(frozen=True)
class Shape:
    """Where the server keeps its data and runs its turns."""

    name: str
    database_url: str | None = None  # None: the embedded SQLite
    redis_url: str | None = None
    redis_prefix: str = "chatplane"


@pytest.fixture(scope="session")
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(chunks=("Hello", ",", " world", "!")) as fake:
        yield fake


@pytest.fixture(scope="session", params=["embedded", "postgres", "scaled"])
def shape(request: pytest.FixtureRequest) -> Shape:
    """The API suite runs on SQLite with the in-process broker, on Postgres, and on
    Postgres with the Redis broker."""
    if request.param == "embedded":
        return Shape("embedded")
    url: str = request.getfixturevalue("postgres_url")
    if request.param == "postgres":
        return Shape("postgres", database_url=url)
    return Shape("scaled", database_url=url, redis_url=REDIS_URL, redis_prefix=unique_prefix())


@asynccontextmanager
async def shape_server(
    shape: Shape,
    data_dir: Path,
    fake_openai: FakeOpenAI,
    *,
    email: str,
    **overrides: Any,
) -> AsyncIterator[LiveServer]:
    """A real server of a shape, set up as every suite's shared server: the slow mock, the
    fake OpenAI upstream, and loopback as a trusted proxy (so each test can be its own
    client IP through X-Forwarded-For). On the shared Postgres database each server needs
    an admin email of its own."""
    if shape.redis_url:
        await require_redis()
    settings = make_settings(
        data_dir,
        database_url=shape.database_url,
        redis_url=shape.redis_url,
        redis_prefix=shape.redis_prefix,
        mock_chunk_delay_ms=MOCK_CHUNK_DELAY_MS,
        openai_base_url=fake_openai.base_url,
        trusted_proxies=["127.0.0.1"],
        **overrides,
    )
    server = await start_live_server(settings, email=email)
    try:
        yield server
    finally:
        await server.stop()
        if shape.redis_url:
            await delete_keys(shape.redis_prefix)


@pytest.fixture(scope="session")
async def live(
    shape: Shape,
    tmp_path_factory: pytest.TempPathFactory,
    fake_openai: FakeOpenAI,
) -> AsyncIterator[LiveServer]:
    """One real server per shape, shared by the API tests. In the scaled shape the same
    process also runs a turn worker, as `chatplane worker` would."""
    async with shape_server(
        shape,
        tmp_path_factory.mktemp(f"live-{shape.name}"),
        fake_openai,
        email=f"ada.{shape.name}@example.com",
        max_request_kb=64,
        model_prices={"gpt-fake": [2.0, 8.0]},
    ) as server:
        yield server
