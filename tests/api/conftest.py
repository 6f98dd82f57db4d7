from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api.live import LiveServer, start_live_server
from tests.conftest import make_settings
from tests.providers.fakes import FakeOpenAI

MOCK_CHUNK_DELAY_MS = 5.0


@pytest.fixture(scope="session")
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(chunks=("Hello", ",", " world", "!")) as fake:
        yield fake


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The API suite runs once per database: None is the embedded SQLite default."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return None


@pytest.fixture(scope="session")
async def live(
    database_url: str | None,
    tmp_path_factory: pytest.TempPathFactory,
    fake_openai: FakeOpenAI,
) -> AsyncIterator[LiveServer]:
    """One real server per database backend, shared by the API tests."""
    data_dir: Path = tmp_path_factory.mktemp("live")
    settings = make_settings(
        data_dir,
        database_url=database_url,
        mock_chunk_delay_ms=MOCK_CHUNK_DELAY_MS,
        openai_base_url=fake_openai.base_url,
        max_request_kb=64,
        model_prices={"gpt-fake": [2.0, 8.0]},
    )
    server = await start_live_server(settings)
    yield server
    await server.stop()
