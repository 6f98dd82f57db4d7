"""The usage suite's live servers: one per shape (SQLite; Postgres; Postgres and Redis),
set up like the API suite's, with a priced upstream model. Its own servers, like the admin
suite's, so its admin email is its own on the shared Postgres database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.api.conftest import Shape, fake_openai, shape, shape_server  # noqa: F401
from tests.api.live import LiveServer
from tests.providers.fakes import FakeOpenAI

# USD per million tokens of the upstream model, from CHATPLANE_MODEL_PRICES.
GPT_FAKE_PRICE = (2.0, 8.0)


@pytest.fixture(scope="session")
async def live(
    shape: Shape,  # noqa: F811 - the fixtures imported above
    tmp_path_factory: pytest.TempPathFactory,
    fake_openai: FakeOpenAI,  # noqa: F811
) -> AsyncIterator[LiveServer]:
    async with shape_server(
        shape,
        tmp_path_factory.mktemp(f"live-usage-{shape.name}"),
        fake_openai,
        email=f"usage-suite.{shape.name}@example.com",
        model_prices={"gpt-fake": list(GPT_FAKE_PRICE)},
    ) as server:
        yield server
