"""One suite for every window counter: in-process and Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from chatplane.errors import ServiceUnavailable
from chatplane.limits.counters import MemoryWindowCounter, WindowCounter
from chatplane.limits.redis import RedisWindowCounter
from tests.broker.support import (
    REDIS_URL,
    delete_keys,
    eventually,
    require_redis,
    unique_prefix,
)


@pytest.fixture(params=["memory", "redis"])
async def counter(request: pytest.FixtureRequest) -> AsyncIterator[WindowCounter]:
    if request.param == "memory":
        memory = MemoryWindowCounter()
        yield memory
        await memory.close()
        return
    await require_redis()
    prefix = unique_prefix()
    redis = RedisWindowCounter.from_url(REDIS_URL, key_prefix=prefix)
    yield redis
    await redis.close()
    await delete_keys(prefix)


async def test_hits_count_within_a_window(counter: WindowCounter) -> None:
    key = uuid.uuid4().hex
    assert (await counter.peek(key)).count == 0
    for expected in (1, 2, 3):
        assert (await counter.hit(key, window_s=60)).count == expected
    seen = await counter.peek(key)
    assert seen.count == 3
    assert 0 < seen.retry_after_s <= 60
    assert (await counter.peek(uuid.uuid4().hex)).count == 0  # keys are independent


async def test_the_window_ends_and_reset_clears(counter: WindowCounter) -> None:
    key = uuid.uuid4().hex
    await counter.hit(key, window_s=0.2)
    await counter.hit(key, window_s=0.2)

    async def window_ended() -> bool:
        return (await counter.peek(key)).count == 0

    await eventually(window_ended)
    assert (await counter.hit(key, window_s=60)).count == 1
    await counter.reset(key)
    assert (await counter.peek(key)).count == 0


async def test_concurrent_hits_are_all_counted(counter: WindowCounter) -> None:
    key = uuid.uuid4().hex
    results = await asyncio.gather(*[counter.hit(key, window_s=60) for _ in range(50)])
    assert sorted(r.count for r in results) == list(range(1, 51))


async def test_an_unreachable_redis_is_a_clear_error() -> None:
    counter = RedisWindowCounter.from_url("redis://127.0.0.1:1/0", key_prefix="nowhere")
    try:
        with pytest.raises(ServiceUnavailable):
            await counter.hit("k", window_s=1)
    finally:
        await counter.close()
