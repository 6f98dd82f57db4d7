"""The operations suite's live servers, per shape (SQLite with the in-process broker;
Postgres with Redis): one that runs turns, as `serve` does, and one without a turn worker,
where a turn waits in the queue until the test takes its job."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.api.conftest import Shape
from tests.api.live import LiveServer, start_live_server
from tests.broker.support import REDIS_URL, delete_keys, require_redis, unique_prefix
from tests.conftest import make_settings
from tests.ops.support import OPS_TOKEN

# A mock-echo turn of WORDS words takes about WORDS x this: long enough to be seen running.
MOCK_CHUNK_DELAY_MS = 40.0


@pytest.fixture(scope="session", params=["embedded", "scaled"])
def ops_shape(request: pytest.FixtureRequest) -> Shape:
    if request.param == "embedded":
        return Shape("embedded")
    url: str = request.getfixturevalue("postgres_url")
    return Shape("scaled", database_url=url, redis_url=REDIS_URL, redis_prefix=unique_prefix())


async def _server(
    shape: Shape, tmp_path_factory: pytest.TempPathFactory, name: str, *, run_turns: bool
) -> LiveServer:
    if shape.redis_url:
        await require_redis()
    prefix = unique_prefix() if shape.redis_url else "chatplane"
    settings = make_settings(
        tmp_path_factory.mktemp(f"ops-{name}-{shape.name}"),
        database_url=shape.database_url,
        redis_url=shape.redis_url,
        redis_prefix=prefix,
        mock_chunk_delay_ms=MOCK_CHUNK_DELAY_MS,
        ops_token=OPS_TOKEN,
        presence_interval_s=0.5,
        # A job taken and handed back once is dead: the dead-letter list fills at once.
        turn_max_attempts=1 if not run_turns else 3,
        trusted_proxies=["127.0.0.1"],
    )
    return await start_live_server(
        settings,
        email=f"ops-{name}.{shape.name}@example.com",
        run_turns=run_turns,
        with_user=False,
    )


@pytest.fixture(scope="session")
async def ops_live(
    ops_shape: Shape, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    """A server that runs turns (the embedded `serve`; in the scaled shape, an API process
    with a worker inside)."""
    server = await _server(ops_shape, tmp_path_factory, "live", run_turns=True)
    yield server
    await server.stop()
    if ops_shape.redis_url:
        await delete_keys(server.services.settings.redis_prefix)


@pytest.fixture(scope="session")
async def idle_live(
    ops_shape: Shape, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    """A server without a turn worker: its turns stay queued."""
    server = await _server(ops_shape, tmp_path_factory, "idle", run_turns=False)
    yield server
    await server.stop()
    if ops_shape.redis_url:
        await delete_keys(server.services.settings.redis_prefix)
