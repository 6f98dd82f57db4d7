"""One suite for both response-cache stores (in-process and Redis)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from chatplane.gateway.response_cache import (
    MemoryResponseCache,
    RedisResponseCache,
    create_response_cache,
)
from chatplane.observability import metrics
from tests.conftest import make_settings
from tests.gateway_cache.conftest import CacheFactory


async def test_a_kept_entry_is_read_back_and_others_miss(make_cache: CacheFactory) -> None:
    cache = make_cache()
    assert await cache.put("a" * 64, b'{"text": "hello"}')
    assert await cache.get("a" * 64) == b'{"text": "hello"}'
    assert await cache.get("b" * 64) is None
    assert await cache.put("a" * 64, b"newer")  # a second write replaces the first
    assert await cache.get("a" * 64) == b"newer"


async def test_an_entry_expires_after_the_ttl(make_cache: CacheFactory) -> None:
    cache = make_cache(response_cache_ttl_s=0.2)
    assert await cache.put("ttl", b"soon gone")
    assert await cache.get("ttl") == b"soon gone"
    deadline = time.monotonic() + 5
    while await cache.get("ttl") is not None:
        assert time.monotonic() < deadline, "the entry outlived its TTL"
        await asyncio.sleep(0.02)


async def test_an_entry_over_the_size_cap_is_not_kept(make_cache: CacheFactory) -> None:
    cache = make_cache(response_cache_max_entry_kb=1)
    assert cache.max_entry_bytes == 1024
    assert not await cache.put("big", b"x" * 1025)
    assert await cache.get("big") is None
    assert await cache.put("fits", b"x" * 1024)
    assert await cache.get("fits") == b"x" * 1024


async def test_memory_total_cap_evicts_least_recently_used() -> None:
    """The in-process tier's own bound (Redis bounds its total by its own policy)."""
    cache = MemoryResponseCache(ttl_s=60, max_bytes=3000, max_entry_bytes=1000)
    for name in ("a", "b", "c"):
        assert await cache.put(name, name.encode() * 1000)
    assert await cache.get("a") is not None  # "a" is now the most recently used
    assert await cache.put("d", b"d" * 1000)  # over 3000 bytes: the least recent goes
    assert await cache.get("b") is None
    assert [await cache.get(n) is not None for n in ("a", "c", "d")] == [True, True, True]
    assert cache.size_bytes == 3000
    assert len(cache) == 3


async def test_the_memory_total_comes_from_the_settings(tmp_path: Path) -> None:
    cache = create_response_cache(make_settings(tmp_path, response_cache_max_mb=0.5))
    assert isinstance(cache, MemoryResponseCache)
    assert cache.max_bytes == 512 * 1024


async def test_an_unreachable_redis_is_a_miss_never_an_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0")
    cache = create_response_cache(settings)
    assert isinstance(cache, RedisResponseCache)  # CHATPLANE_REDIS_URL chooses Redis
    errors = metrics.RESPONSE_CACHE.labels("error")
    before = errors._value.get()
    try:
        assert await cache.get("k") is None
        assert not await cache.put("k", b"v")
    finally:
        await cache.close()
    assert errors._value.get() == before + 2
