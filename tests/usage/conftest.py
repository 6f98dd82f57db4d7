"""The usage suite's live servers: one per shape (SQLite; Postgres; Postgres and Redis),
set up like the API suite's, with a priced upstream model. Its own servers, like the admin
suite's, so its admin email is its own on the shared Postgres database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.api.conftest import MOCK_CHUNK_DELAY_MS, Shape, fake_openai, shape  # noqa: F401
from tests.api.live import LiveServer, start_live_server
from tests.broker.support import delete_keys, require_redis
from tests.conftest import make_settings
from tests.providers.fakes import FakeOpenAI

# USD per million tokens of the upstream model, from CHATPLANE_MODEL_PRICES.
GPT_FAKE_PRICE = (2.0, 8.0)


@pytest.fixture(scope="session")
async def live(
    shape: Shape,  # noqa: F811 - the fixtures imported above
    tmp_path_factory: pytest.TempPathFactory,
    fake_openai: FakeOpenAI,  # noqa: F811
) -> AsyncIterator[LiveServer]:
    if shape.redis_url:
        await require_redis()
    settings = make_settings(
        tmp_path_factory.mktemp(f"live-usage-{shape.name}"),
        database_url=shape.database_url,
        redis_url=shape.redis_url,
        redis_prefix=shape.redis_prefix,
        mock_chunk_delay_ms=MOCK_CHUNK_DELAY_MS,
        openai_base_url=fake_openai.base_url,
        model_prices={"gpt-fake": list(GPT_FAKE_PRICE)},
        trusted_proxies=["127.0.0.1"],
    )
    server = await start_live_server(settings, email=f"usage-suite.{shape.name}@example.com")
    yield server
    await server.stop()
    if shape.redis_url:
        await delete_keys(shape.redis_prefix)
