"""The response-cache stores: tests take `make_cache` and run once in-process and once on
the local Redis (CHATPLANE_TEST_REDIS_URL; without it those runs skip, or fail when CI is
set). Stores are built by the settings factory, as the server builds them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from chatplane.gateway.response_cache import ResponseCacheStore, create_response_cache
from tests.broker.support import REDIS_URL, delete_keys, require_redis, unique_prefix
from tests.conftest import make_settings


class CacheFactory(Protocol):
    def __call__(self, **settings: Any) -> ResponseCacheStore: ...


@pytest.fixture(params=["memory", "redis"])
async def make_cache(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CacheFactory]:
    backend: str = request.param
    if backend == "redis":
        await require_redis()
    prefix = unique_prefix()
    made: list[ResponseCacheStore] = []

    def build(**overrides: Any) -> ResponseCacheStore:
        redis = {"redis_url": REDIS_URL, "redis_prefix": prefix} if backend == "redis" else {}
        store = create_response_cache(make_settings(tmp_path, **redis, **overrides))
        made.append(store)
        return store

    yield build
    for store in made:
        await store.close()
    if backend == "redis":
        await delete_keys(prefix)
