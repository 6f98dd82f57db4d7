"""The admin suite's live servers: one per shape (SQLite; Postgres; Postgres and Redis),
set up like the API suite's. They are its own because a fixture imported into a second
conftest is a second fixture: two servers per shape would then start with the same admin
email on the shared Postgres database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.api.conftest import Shape, fake_openai, shape, shape_server  # noqa: F401
from tests.api.live import LiveServer
from tests.providers.fakes import FakeOpenAI


@pytest.fixture(scope="session")
async def live(
    shape: Shape,  # noqa: F811 - the fixtures imported above
    tmp_path_factory: pytest.TempPathFactory,
    fake_openai: FakeOpenAI,  # noqa: F811
) -> AsyncIterator[LiveServer]:
    async with shape_server(
        shape,
        tmp_path_factory.mktemp(f"live-admin-{shape.name}"),
        fake_openai,
        email=f"admin-suite.{shape.name}@example.com",
    ) as server:
        yield server
