"""One broker test suite for every implementation: tests take `broker` or `make_broker` and
run once per backend. The Redis backend needs the local Redis (CHATPLANE_TEST_REDIS_URL,
default redis://127.0.0.1:6379/0): without it those tests skip, or fail when CI is set."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from chatplane.broker import MemoryBroker, RedisBroker

from .support import (
    REDIS_URL,
    AnyBroker,
    BrokerFactory,
    delete_keys,
    require_redis,
    unique_prefix,
)


@pytest.fixture(params=["memory", "redis"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[BrokerFactory]:
    """Build started brokers of this test's backend; tests default to a 0.3 s visibility
    timeout and 3 attempts. All are closed (and their Redis keys deleted) afterwards."""
    backend: str = request.param
    if backend == "redis":
        await require_redis()
    prefix = unique_prefix()
    created: list[AnyBroker] = []

    async def build(**options: Any) -> AnyBroker:
        options.setdefault("visibility_timeout_s", 0.3)
        options.setdefault("max_attempts", 3)
        broker: AnyBroker
        if backend == "memory":
            for redis_only in ("max_connections", "read_block_s"):
                options.pop(redis_only, None)
            broker = MemoryBroker(**options)
        else:
            broker = RedisBroker(REDIS_URL, key_prefix=prefix, **options)
        await broker.start()
        created.append(broker)
        return broker

    yield build
    for broker in created:
        await broker.close()
    if backend == "redis":
        await delete_keys(prefix)


@pytest.fixture
async def broker(make_broker: BrokerFactory) -> AnyBroker:
    return await make_broker()
