"""The cache suite: every implementation of `chatplane.cache.Cache` (in-process; in-process
in front of Redis), and live servers of every shape for the services that use it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from chatplane.cache import Cache, create_cache
from tests.api.conftest import Shape, fake_openai, shape, shape_server  # noqa: F401
from tests.api.live import LiveServer
from tests.broker.support import REDIS_URL, delete_keys, require_redis, unique_prefix
from tests.conftest import make_settings
from tests.providers.fakes import FakeOpenAI

CacheFactory = Callable[[], Awaitable[Cache]]


@pytest.fixture(params=["local", "redis"])
async def make_cache(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CacheFactory]:
    """Caches of one deployment, as separate processes would hold them: in-process ones
    share nothing; Redis ones share a key prefix of their own (deleted afterwards)."""
    overrides: dict[str, object] = {}
    if request.param == "redis":
        await require_redis()
        overrides = {"redis_url": REDIS_URL, "redis_prefix": unique_prefix()}
    made: list[Cache] = []

    async def make() -> Cache:
        cache = create_cache(make_settings(tmp_path, **overrides))
        await cache.start()
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()
    if overrides:
        await delete_keys(str(overrides["redis_prefix"]))


@pytest.fixture
async def cache(make_cache: CacheFactory) -> Cache:
    return await make_cache()


@pytest.fixture(scope="session")
async def live(
    shape: Shape,  # noqa: F811 - the fixtures imported above
    tmp_path_factory: pytest.TempPathFactory,
    fake_openai: FakeOpenAI,  # noqa: F811
) -> AsyncIterator[LiveServer]:
    """The cache suite's live servers (its own, as the admin suite's: one admin email per
    server on the shared Postgres database)."""
    async with shape_server(
        shape,
        tmp_path_factory.mktemp(f"live-cache-{shape.name}"),
        fake_openai,
        email=f"cache-suite.{shape.name}@example.com",
    ) as server:
        yield server
