"""One suite for every limit store: tests take `stores` or `make_stores` and run once
in-process and once on the local Redis (CHATPLANE_TEST_REDIS_URL, default
redis://127.0.0.1:6379/0; without it those runs skip, or fail when CI is set). Each test
has a key prefix of its own, and its keys are deleted afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest

from chatplane.limits.redis_stores import redis_limit_stores
from chatplane.limits.stores import LimitStores, memory_limit_stores
from tests.broker.support import REDIS_URL, delete_keys, require_redis, unique_prefix


class StoresFactory(Protocol):
    def __call__(self, **options: Any) -> LimitStores: ...


async def _factory(backend: str) -> AsyncIterator[StoresFactory]:
    """Stores of `backend`; on Redis every call is one more replica (a client of its own)
    sharing the test's prefix. All are closed afterwards."""
    if backend == "redis":
        await require_redis()
    prefix = unique_prefix()
    made: list[LimitStores] = []

    def build(**options: Any) -> LimitStores:
        if backend == "memory":
            options.pop("lease_ttl_s", None)
            stores = memory_limit_stores(**options)
        else:
            stores = redis_limit_stores(REDIS_URL, key_prefix=prefix, **options)
        made.append(stores)
        return stores

    yield build
    for stores in made:
        await stores.close()
    if backend == "redis":
        await delete_keys(prefix)


@pytest.fixture(params=["memory", "redis"])
async def make_stores(request: pytest.FixtureRequest) -> AsyncIterator[StoresFactory]:
    async for factory in _factory(request.param):
        yield factory


@pytest.fixture
async def make_replicas() -> AsyncIterator[StoresFactory]:
    """Redis only: each call is one more process sharing the limits."""
    async for factory in _factory("redis"):
        yield factory


@pytest.fixture
def stores(make_stores: StoresFactory) -> LimitStores:
    return make_stores()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
